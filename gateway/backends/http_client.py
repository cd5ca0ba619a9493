"""The HTTP/1.1 client the gateway calls its upstreams with: a keep-alive pool of
connections, each an `asyncio.Protocol` whose answers llhttp parses (httptools).

aiohttp's client spent ~75 µs of CPU on each call (request and response objects, trace
hooks, cookie handling, a timer and a stream reader per request): more than translating
the request and its answer. The gateway needs less: POST a body, then read a whole
answer or relay a stream of bytes, with connect, first-byte and total timeouts, TLS, and
gzip or deflate answers. This is that, at about a sixth of the cost.

- **Connections** are kept per (scheme, host, port) and reused newest first; one idle for
  longer than `keepalive` seconds (per call: each backend sets its own, below its
  server's idle timeout), or that the server closed, is never used again. An answer read
  to its end gives its connection back at once; one abandoned midway (a client that
  left) closes it, so the upstream stops generating.
- **A stale pooled connection**: a server may close an idle connection just as it is
  reused (its FIN crosses the request). When a reused connection ends before a single
  byte of the answer came back, the request is sent again at once on a new connection,
  once: the server never read it, so this is not an upstream failure, and the caller
  never sees it.
- **Timeouts**, one timer per call: `connect` bounds opening a connection (TLS
  included); `first_byte` bounds the silence before the answer's headers, and for a
  whole answer (`stream=False`) between any two reads of it; `total` bounds the call.
  A stream's silence after its headers is its reader's to judge (the pump sends pings
  meanwhile). A timeout raises `TimeoutError`.
- **Errors**: `CannotConnect` (refused, unresolvable, TLS failed), `Disconnected` (the
  connection ended before the answer's headers), `CutShort` (in its body), `BadResponse` (not HTTP/1.x, or an encoding
  this client cannot decode), `TooLarge` (past `max_body`, below); all are `UpstreamError`s.
- **Size**: an answer is held in this process, so a broken or hostile upstream must not
  decide how much: past `max_body` bytes (per call, counted after decompression) the
  answer fails with `TooLarge` and its connection is dropped. A whole answer (`read`, and
  any answer that is not a stream's 200) counts all its body; a stream counts what it
  holds unread, which flow control keeps near `HIGH_WATER` unless one read inflates past
  the cap. gzip and deflate are inflated in pieces of `_PIECE` bytes, so a small bomb
  fails at the cap rather than after expanding whole.
- **Flow control**: a stream whose reader falls behind by `HIGH_WATER` bytes stops
  reading from the upstream until it catches up (a slow client holds its upstream's
  bytes in the kernel, not in this process).
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections.abc import Mapping

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

HIGH_WATER = 256 * 1024
# The default cap on an answer's decoded bytes: far above any real answer (a long
# non-streamed reply is a few MB), well below what would hurt a worker.
MAX_BODY = 64 * 1024 * 1024
# Bytes inflated at a time: a compression bomb is refused at most this far past its cap.
_PIECE = 64 * 1024
# Seconds an idle connection is kept: below the 5 s idle timeout of uvicorn, which vLLM and
# many OpenAI-compatible servers run behind, so the server is not the one to close it.
KEEPALIVE = 4.0
_COMPRESSED = ("gzip", "x-gzip", "deflate")


class UpstreamError(Exception):
    """The upstream could not be reached or did not answer in HTTP."""


class CannotConnect(UpstreamError):
    pass


class Disconnected(UpstreamError):
    """The connection ended before the answer's headers."""

    # Not one byte of an answer came back before the end (the server may not have read
    # the request at all).
    silent: bool = False


class CutShort(Disconnected):
    """The connection ended in the middle of the answer's body."""


class BadResponse(UpstreamError):
    pass


class TooLarge(BadResponse):
    """The answer's body went past the call's `max_body`."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than {limit} bytes")
        self.limit = limit


class _Overflow(Exception):
    """Inflating went past the bytes the answer had left (`_Inflater.decompress`)."""


class Response:
    """An answer: `status` and `headers` once `UpstreamClient.post` returns, then the body,
    read whole (`read`) or as it comes (`take`, `read_some`, `at_eof`). `close()` when done."""

    __slots__ = (
        "status",
        "headers",
        "_conn",
        "_loop",
        "_chunks",
        "_size",
        "_complete",
        "_error",
        "_waiter",
        "_inflate",
        "_paused",
        "_timer",
        "_read_timeout",
        "_deadline",
        "_stream",
        "_until_close",
        "last_io",
        "heard",
        "_max_body",
        "_received",
        "_whole",
    )

    def __init__(
        self,
        conn: _Connection,
        loop: asyncio.AbstractEventLoop,
        *,
        stream: bool,
        read_timeout: float,
        deadline: float,
        max_body: int = MAX_BODY,
    ) -> None:
        self.status = 0
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS
        self._conn: _Connection | None = conn
        self._loop = loop
        self._chunks: list[bytes] = []
        self._size = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._inflate: _Inflater | None = None
        self._paused = False
        self._stream = stream
        self._until_close = False  # no length and not chunked: the body ends with the connection
        self._read_timeout: float | None = read_timeout
        self._deadline = deadline
        self._max_body = max_body
        self._received = 0  # body bytes, decoded
        self._whole = True  # read whole: `max_body` bounds all of it, not only what is unread
        self.last_io = loop.time()
        self.heard = False  # a byte of the answer came back
        self._timer = loop.call_at(min(deadline, self.last_io + read_timeout), self._check)

    # ---------------------------------------------------------------- reading

    def take(self) -> bytes:
        """The body bytes received and not yet taken; b"" if none (`at_eof` says whether
        more can come)."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._size = 0
        if self._paused:
            self._paused = False
            if self._conn is not None:
                self._conn.resume()
        return data

    def at_eof(self) -> bool:
        return self._complete and not self._chunks

    async def read_some(self) -> bytes:
        """The next body bytes, waiting for them if none are here; b"" at the end."""
        while True:
            data = self.take()
            if data:
                return data
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            await self._wait()

    async def read(self) -> bytes:
        parts = []
        while data := await self.read_some():
            parts.append(data)
        return b"".join(parts)

    def close(self) -> None:
        """Done with the answer. One not read to its end takes its connection down with it."""
        self._timer.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.drop()
        if not self._complete and self._error is None:
            self._error = CutShort("the answer was closed before its end")

    async def _wait(self) -> None:
        self._waiter = waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---------------------------------------------------------------- from the connection

    def _started(self, status: int, headers: list[tuple[str, str]], until_close: bool) -> None:
        self.headers = CIMultiDictProxy(CIMultiDict(headers))
        encoding = self.headers.get("content-encoding", "").strip().lower()
        if encoding in _COMPRESSED:
            self._inflate = _Inflater(encoding)
        elif encoding not in ("", "identity"):
            self._fail(BadResponse(f"the answer is encoded as {encoding!r}, which the gateway cannot decode"))
            return
        self._until_close = until_close
        self.status = status
        if self._stream and status == 200:  # from here on, the reader judges silence (an error is read whole)
            self._read_timeout = None
            self._whole = False
        self._wake()

    def _room(self) -> int:
        """Body bytes this answer may still take in (`max_body`)."""
        return self._max_body - (self._received if self._whole else self._size)

    def _feed(self, data: bytes) -> None:
        budget = self._room()
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data, budget)
            except zlib.error:
                self._fail(BadResponse("the answer's compressed body is corrupt"))
                return
            except _Overflow:
                self._fail(TooLarge(self._max_body))
                return
            if not data:
                return
        elif len(data) > budget:
            self._fail(TooLarge(self._max_body))
            return
        self._received += len(data)
        self._chunks.append(data)
        self._size += len(data)
        self._wake()
        if self._size > HIGH_WATER and not self._paused and self._conn is not None:
            self._paused = True
            self._conn.pause()

    def _finished(self) -> None:
        """The whole body arrived; the connection is free (or gone)."""
        self._conn = None
        self._timer.cancel()
        if self._inflate is not None:
            try:
                rest = self._inflate.end()
            except zlib.error:
                self._fail(BadResponse("the answer's compressed body ends early"))
                return
            if len(rest) > self._room():
                self._fail(TooLarge(self._max_body))
                return
            if rest:
                self._chunks.append(rest)
        self._complete = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._complete or self._error is not None:
            return
        self._error = error
        self._timer.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.drop()
        self._wake()

    def _lost(self, exc: Exception | None) -> None:
        """The connection ended: cleanly (`exc` None), or reset."""
        self._conn = None
        if self.status and self._until_close and exc is None:
            self._finished()
        elif self.status:
            self._fail(CutShort("the upstream closed the connection in the middle of the answer"))
        else:
            error = Disconnected("the upstream closed the connection without answering")
            error.silent = not self.heard
            self._fail(error)

    def _check(self) -> None:
        now = self._loop.time()
        if now >= self._deadline:
            self._fail(TimeoutError("the upstream did not finish within the total timeout"))
            return
        if self._read_timeout is None:
            due = self._deadline
        elif self._paused:  # the reader is behind, not the upstream
            due = min(self._deadline, now + self._read_timeout)
        elif now - self.last_io >= self._read_timeout:
            self._fail(TimeoutError("the upstream went silent"))
            return
        else:
            due = min(self._deadline, self.last_io + self._read_timeout)
        self._timer = self._loop.call_at(max(due, now + 0.001), self._check)


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class _Inflater:
    """gzip, or deflate with its zlib header or without one (servers send both); a body
    that stops before its compressed stream's end is an error (`end`). Output comes in
    pieces of at most `_PIECE` bytes, counted as they come: a few KB of input can stand
    for GBs of output, which must never be made whole to be refused."""

    __slots__ = ("_zlib", "_head")

    def __init__(self, encoding: str) -> None:
        self._zlib = None if encoding == "deflate" else zlib.decompressobj(wbits=31)
        self._head = b""  # deflate: bytes kept until the header can be told

    def decompress(self, data: bytes, budget: int) -> bytes:
        """`data` inflated; raises `_Overflow` once that is more than `budget` bytes."""
        if self._zlib is None:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return b""
            # A zlib header: CM 8 in the low nibble, and the first two bytes a multiple of 31.
            header = data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._zlib = zlib.decompressobj(wbits=15 if header else -15)
        inflater = self._zlib
        pieces: list[bytes] = []
        size = 0
        while True:
            piece = inflater.decompress(data, _PIECE)
            size += len(piece)
            if size > budget:
                raise _Overflow
            pieces.append(piece)
            data = inflater.unconsumed_tail
            # A full piece may leave output inside zlib even with no input left: ask again.
            if inflater.eof or (not data and len(piece) < _PIECE):
                break
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def end(self) -> bytes:
        if self._zlib is None:
            if self._head:
                raise zlib.error("truncated")
            return b""  # no body at all
        rest = self._zlib.flush()
        if not self._zlib.eof:
            raise zlib.error("truncated")
        return rest


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_pool",
        "_key",
        "_loop",
        "transport",
        "_parser",
        "response",
        "closed",
        "idle_since",
        "_headers",
        "_interim",
    )

    def __init__(self, pool: UpstreamClient, key: tuple, loop: asyncio.AbstractEventLoop) -> None:
        self._pool, self._key, self._loop = pool, key, loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.idle_since = 0.0
        self._headers: list[tuple[str, str]] = []
        self._interim = False  # a 1xx answer: skipped, the real one follows

    def send(self, response: Response, data: bytes, body: bytes) -> None:
        self.response = response
        assert self.transport is not None
        if len(body) < 65536:
            self.transport.write(data + body)
        else:
            self.transport.writelines((data, body))

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def drop(self) -> None:
        """Close at once: what is under way on it is abandoned."""
        self.response = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    # ---------------------------------------------------------------- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: this connection cannot be trusted
            self.drop()
            return
        response.last_io = self._loop.time()
        response.heard = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            response._fail(BadResponse("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            response._fail(BadResponse(f"the upstream's answer is not valid HTTP/1.1 ({exc})"))

    def eof_received(self) -> bool:
        return False  # close our end too; `connection_lost` follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response, self.response = self.response, None
        if response is not None:
            response._lost(exc)

    # ---------------------------------------------------------------- llhttp

    def on_message_begin(self) -> None:
        if self.response is None:  # an answer nobody asked for: the connection is not usable
            self.drop()
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        self._interim = 100 <= status < 200
        response = self.response
        if self._interim or response is None:
            return
        headers = self._headers
        names = {name.lower() for name, _ in headers}
        until_close = "content-length" not in names and "transfer-encoding" not in names and status not in (204, 304)
        response._started(status, headers, until_close)

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is not None and not self._interim:
            response._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        response, self.response = self.response, None
        reuse = self._parser.should_keep_alive() and not self.closed
        if response is not None:
            response._finished()
        if reuse:
            # The read that ended the answer may have paused reading (its reader is
            # behind): the connection's next answer must be read all the same.
            self.resume()
            self.idle_since = self._loop.time()
            self._pool._release(self)
        else:
            self.drop()


class UpstreamClient:
    """One per gateway process: every upstream call goes through it. `close()` at shutdown."""

    def __init__(self, *, keepalive: float = KEEPALIVE, ssl_context: ssl.SSLContext | None = None) -> None:
        self._keepalive = keepalive
        self._ssl = ssl_context
        self._idle: dict[tuple, list[_Connection]] = {}
        self._lines: dict[URL, bytes] = {}  # the request line and Host header of each URL
        self._closed = False

    async def post(
        self,
        url: URL,
        body: bytes,
        headers: Mapping[str, str],
        *,
        connect: float,
        first_byte: float,
        total: float,
        stream: bool = False,
        keepalive: float | None = None,
        max_body: int = MAX_BODY,
    ) -> Response:
        """POST `body` and wait for the answer's status and headers (the body is the
        caller's to read). `keepalive`: the longest a pooled connection may have been
        idle to be reused for this call (default: the client's); `max_body`: the most
        bytes of its answer this call holds (see **Size** above). Raises `UpstreamError`
        or `TimeoutError`."""
        if self._closed:
            raise CannotConnect("the upstream client is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total
        lines = self._lines.get(url)
        if lines is None:
            lines = self._request_lines(url)
        data = lines + _header_block(headers, len(body))
        conn = self._idle_connection(url, loop.time(), self._keepalive if keepalive is None else keepalive)
        if conn is not None:
            try:
                return await self._exchange(conn, data, body, loop, stream, first_byte, deadline, max_body)
            except Disconnected as exc:
                if not exc.silent or type(exc) is not Disconnected:
                    raise
                # The server closed the pooled connection as the request went out: send it
                # again on a new one (`post` runs no further than this once).
        conn = await self._connect(url, loop, connect, deadline)
        return await self._exchange(conn, data, body, loop, stream, first_byte, deadline, max_body)

    async def _exchange(
        self,
        conn: _Connection,
        data: bytes,
        body: bytes,
        loop: asyncio.AbstractEventLoop,
        stream: bool,
        first_byte: float,
        deadline: float,
        max_body: int,
    ) -> Response:
        response = Response(conn, loop, stream=stream, read_timeout=first_byte, deadline=deadline, max_body=max_body)
        conn.send(response, data, body)
        try:
            while not response.status:
                if response._error is not None:
                    raise response._error
                await response._wait()
        except BaseException:
            response.close()
            raise
        return response

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.drop()
        self._idle.clear()

    # ---------------------------------------------------------------- connections

    def _idle_connection(self, url: URL, now: float, keepalive: float) -> _Connection | None:
        idle = self._idle.get((url.scheme, url.host, url.port))
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < keepalive:
                return conn
            conn.drop()
        return None

    def _release(self, conn: _Connection) -> None:
        if self._closed:
            conn.drop()
            return
        idle = self._idle.setdefault(conn._key, [])
        if len(idle) > 64 and idle[0].closed:  # those the servers closed meanwhile
            idle[:] = [c for c in idle if not c.closed]
        idle.append(conn)

    async def _connect(self, url: URL, loop: asyncio.AbstractEventLoop, timeout: float, deadline: float) -> _Connection:
        key = (url.scheme, url.host, url.port)
        host, port = url.host, url.port
        assert host is not None and port is not None  # a backend's URL is absolute (config checks it)
        tls = url.scheme == "https"
        context = self._ssl_context() if tls else None
        try:
            async with asyncio.timeout(min(timeout, max(deadline - loop.time(), 0.0))):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, key, loop), host, port, ssl=context, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise TimeoutError(f"could not connect to {url.host}:{url.port} in time") from None
        except OSError as exc:  # refused, unreachable, unresolvable (gaierror), TLS (SSLError)
            raise CannotConnect(f"cannot connect to {url.host}:{url.port}: {exc.strerror or exc}") from None
        return conn  # type: ignore[return-value]

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _request_lines(self, url: URL) -> bytes:
        if not url.absolute or url.scheme not in ("http", "https") or not url.host:
            raise CannotConnect(f"not an http(s) URL: {url.scheme}://{url.host or ''}")
        lines = f"POST {url.raw_path_qs} HTTP/1.1\r\nhost: {url.host_port_subcomponent}\r\n".encode("ascii")
        if len(self._lines) < 1024:  # URLs are per backend: a handful
            self._lines[url] = lines
        return lines


def _header_block(headers: Mapping[str, str], length: int) -> bytes:
    parts = []
    accept_encoding = False
    for name, value in headers.items():
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lower = name.lower()
        if lower == "content-length" or lower == "host":
            continue  # this client's to write
        if lower == "accept-encoding":
            accept_encoding = True
        parts.append(f"{name}: {value}\r\n")
    if not accept_encoding:
        parts.append("accept-encoding: gzip, deflate\r\n")
    parts.append(f"content-length: {length}\r\n\r\n")
    return "".join(parts).encode("utf-8")
