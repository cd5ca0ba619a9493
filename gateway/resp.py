"""A lean Redis connection for the limiter's hot path: every admission and settlement.

redis-py spends about 150 µs of CPU on each command (connection pool, retry wrapper,
encoder, parser layers), more than the rest of a request through the gateway. This is a
single pipelined connection to one server, on an `asyncio.Protocol`:

- Commands issued in the same turn of the event loop leave in one write (corking), and
  their replies come back in order, parsed by hiredis.
- One timer per connection, not per command: replies arrive in order, so only the oldest
  command can be late. When it is (`timeout` seconds), the connection is abandoned and
  every command on it fails with `TimeoutError` (it may have run: callers must not
  repeat it blindly, as an admission run twice charges twice).
- A lost connection fails every command in flight with `ConnectionError`; the next
  command opens a new connection (AUTH and SELECT first). A command never written is
  not lost: connecting failed, and the caller may try again.

Errors are redis-py's exception classes, so callers handle one set of errors whichever
client they run on. Used for one server or a Sentinel-discovered master; a cluster's
slots stay with redis-py's cluster client (redis_connect.py).
"""

from __future__ import annotations

import asyncio
import collections
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Sequence

import hiredis
from redis.exceptions import (
    AuthenticationError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float


def encode_command(args: Sequence[Arg]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    return b"*%d\r\n%b" % (len(args), encode_args(args))


def encode_args(args: Sequence[Arg]) -> bytes:
    """A command's arguments in RESP, without the array's header: parts of a command
    encoded apart (see `RespConnection.evalsha_packed`) are joined as bytes."""
    # The limiter's commands are text, nearly always ASCII: built as one string and
    # encoded once (a string's length is then its byte length); anything else, per part.
    try:
        parts = []
        for arg in args:
            text = arg if type(arg) is str else _ascii_text(arg)
            parts.append(f"${len(text)}\r\n{text}\r\n")
        return "".join(parts).encode("ascii")
    except (UnicodeEncodeError, TypeError):
        return _encode_parts(args)


def _ascii_text(arg: Arg) -> str:
    if type(arg) is int:
        return str(arg)
    if type(arg) is float:
        return repr(arg)
    raise TypeError  # bytes (and anything else): the general encoder


def _encode_parts(args: Sequence[Arg]) -> bytes:
    parts = []
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = repr(float(arg)).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def _evalsha(sha: str, count: int, packed: bytes) -> bytes:
    return b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n%b" % (count + 2, len(sha), sha.encode(), packed)


def _eval(script: str, count: int, packed: bytes) -> bytes:
    return b"*%d\r\n%b%b" % (count + 2, encode_args(("EVAL", script)), packed)


def _reply_error(message: str) -> ResponseError:
    if message.startswith("READONLY"):  # a master demoted by a failover: find the new one
        return ReadOnlyError(message)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    if message.startswith(("NOAUTH", "WRONGPASS")):
        return AuthenticationError(message)
    return ResponseError(message)


class _Protocol(asyncio.Protocol):
    def __init__(self, connection: RespConnection) -> None:
        self._connection = connection
        self._reader = hiredis.Reader(replyError=_reply_error)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._connection.waiting
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._connection.abandon(RedisConnectionError(f"Redis sent a malformed reply: {exc}"))
                return
            if reply is False:
                return
            if not waiting:  # nobody asked: the stream is out of step
                self._connection.abandon(RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            future = waiting.popleft()[0]
            if not future.done():
                if isinstance(reply, Exception):  # an error reply, made by `_reply_error`
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
            if isinstance(reply, ReadOnlyError):
                self._connection.abandon(RedisConnectionError("the Redis master became a replica"))
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection.abandon(RedisConnectionError(f"Redis closed the connection ({exc or 'end of stream'})"))


Address = tuple[str, int]


class RespConnection:
    """A pipelined connection to one Redis server (opened on first use, again after a loss).

    `locate`, when given, is asked for the server's address before each connect (a
    Sentinel's current master); `host`/`port` are then ignored."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        locate: Callable[[], Awaitable[Address]] | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        ssl: ssl_module.SSLContext | None = None,
        timeout: float = 1.0,
    ) -> None:
        self.host, self.port = host, port
        self._locate = locate
        self._username, self._password, self._db, self._ssl = username, password, db, ssl
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Future | None = None
        # (future, time written) per command in flight, oldest first.
        self.waiting: collections.deque[tuple[asyncio.Future, float]] = collections.deque()
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def call(self, *args: Arg) -> object:
        return await self.send(encode_command(args))

    async def send(self, command: bytes) -> object:
        """One command already in RESP (`encode_command`); its reply."""
        transport = self._transport
        if transport is None or transport.is_closing():
            await self._connect()
        return await self._queue(command)

    async def send_many(self, commands: Sequence[bytes]) -> list[object]:
        """Commands already in RESP, in one write: each one's reply, or the exception it
        raised (an error reply, a timeout, a lost connection), in order."""
        transport = self._transport
        if transport is None or transport.is_closing():
            await self._connect()
        futures = [self._queue(command) for command in commands]
        replies: list[object] = []
        for future in futures:  # replies come in order: waits once, for the first
            try:
                replies.append(await future)
            except (RedisError, OSError) as exc:
                replies.append(exc)
        return replies

    def _queue(self, command: bytes) -> asyncio.Future:
        loop = self._loop
        assert loop is not None
        future = loop.create_future()
        self.waiting.append((future, loop.time()))
        self._outgoing.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout, self._check)
        return future

    async def evalsha(self, sha: str, script: str, keys: Sequence[Arg], args: Sequence[Arg]) -> object:
        """EVALSHA; after a NOSCRIPT (a restarted or flushed server), EVAL once: the
        script then runs, and the server keeps it for the next EVALSHA."""
        return await self.evalsha_packed(sha, script, 1 + len(keys) + len(args), encode_args((len(keys), *keys, *args)))

    async def evalsha_packed(self, sha: str, script: str, count: int, packed: bytes) -> object:
        """`evalsha` with its numkeys, keys and arguments already in RESP (`encode_args`):
        `count` of them in `packed`. A caller can so encode once what its calls share."""
        transport = self._transport
        if transport is None or transport.is_closing():
            await self._connect()
        try:
            return await self._queue(_evalsha(sha, count, packed))  # (`send`, one coroutine less)
        except NoScriptError:
            return await self.send(_eval(script, count, packed))

    async def evalsha_many(self, sha: str, script: str, calls: Sequence[tuple[int, bytes]]) -> list[object]:
        """`evalsha_packed` of each (count, packed), in one write: each one's reply or
        exception (as `send_many`). Those refused for NOSCRIPT are sent again with EVAL."""
        replies = await self.send_many([_evalsha(sha, count, packed) for count, packed in calls])
        again = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if again:
            retried = await self.send_many([_eval(script, *calls[i]) for i in again])
            for i, reply in zip(again, retried, strict=True):
                replies[i] = reply
        return replies

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outgoing:
            return
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        transport = self._transport
        if transport is None or transport.is_closing():
            self.abandon(RedisConnectionError("the connection to Redis closed before a command left"))
            return
        transport.write(data)

    def _check(self) -> None:
        """The oldest command's deadline (one timer for the connection, moved along)."""
        self._watchdog = None
        if not self.waiting:
            return
        loop = self._loop
        assert loop is not None
        due = self.waiting[0][1] + self._timeout
        if loop.time() >= due:
            self.abandon(RedisTimeoutError(f"Redis did not answer within {self._timeout}s"))
            return
        self._watchdog = loop.call_at(due, self._check)

    async def _connect(self) -> None:
        """Open the connection, once however many callers ask at the same time. The open
        runs as a task of its own: a caller cancelled meanwhile (its client left) cancels
        only its own wait, never the open the others are waiting on."""
        if self._closed:
            raise RedisConnectionError("the connection was closed")
        if self._connecting is None:
            self._loop = asyncio.get_running_loop()
            self._connecting = self._loop.create_task(self._open())
            self._connecting.add_done_callback(self._opened)
        await asyncio.shield(self._connecting)

    def _opened(self, task: asyncio.Task) -> None:
        self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved here; each waiter raises it from its own await

    async def _open(self) -> None:
        loop = self._loop
        assert loop is not None
        try:
            async with asyncio.timeout(self._timeout):
                if self._locate is not None:
                    self.host, self.port = await self._locate()
                transport, _ = await loop.create_connection(
                    lambda: _Protocol(self), self.host, self.port, ssl=self._ssl
                )
            self._transport = transport  # type: ignore[assignment]
            if self._password is not None:
                auth = (self._username, self._password) if self._username else (self._password,)
                await self._hello("AUTH", *auth)
            if self._db:
                await self._hello("SELECT", self._db)
        except AuthenticationError:
            self._drop_transport()
            raise
        except (OSError, TimeoutError, RedisConnectionError) as exc:
            self._drop_transport()
            raise RedisConnectionError(
                f"cannot connect to Redis at {self.host}:{self.port}: {exc or 'timed out'}"
            ) from None
        except BaseException:
            self._drop_transport()
            raise

    def _drop_transport(self) -> None:
        if self._transport is not None:
            self._transport.abort()
            self._transport = None

    async def _hello(self, *args: Arg) -> None:
        """A command during the connect, before others may queue theirs."""
        loop = self._loop
        assert loop is not None and self._transport is not None
        future = loop.create_future()
        self.waiting.append((future, loop.time()))
        self._transport.write(encode_command(args))
        await future

    def abandon(self, error: Exception) -> None:
        """Fail every command in flight with `error` and drop the connection."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._outgoing.clear()
        waiting, self.waiting = self.waiting, collections.deque()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        self._closed = True
        self.abandon(RedisConnectionError("the connection was closed"))


def lean_connection(client: object, timeout: float) -> RespConnection | None:
    """A `RespConnection` to the server a redis-py client talks to (one server, or the
    master its Sentinels name), with the same credentials, database and TLS; None for
    what it does not cover (a cluster, a Unix socket)."""
    from redis.asyncio import Redis
    from redis.asyncio.connection import SSLConnection
    from redis.asyncio.sentinel import SentinelConnectionPool

    if type(client) is not Redis:
        return None
    pool = client.connection_pool
    settings = pool.connection_kwargs
    if "path" in settings:
        return None
    context = None
    if issubclass(pool.connection_class, SSLConnection):
        context = ssl_module.create_default_context(cafile=settings.get("ssl_ca_certs"))
    locate = pool.get_master_address if isinstance(pool, SentinelConnectionPool) else None
    return RespConnection(
        settings.get("host", "127.0.0.1"),
        int(settings.get("port", 6379)),
        locate=locate,
        username=settings.get("username"),
        password=settings.get("password"),
        db=int(settings.get("db") or 0),
        ssl=context,
        timeout=timeout,
    )
