"""The upstream HTTP/1.1 client against real sockets: small servers on 127.0.0.1 that write
exactly the bytes each test scripts (status lines, chunk framing, pauses, closes), so what
the client sends and how it reads every shape of answer are seen on the wire."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import socket
import ssl
import struct
import subprocess
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest
from yarl import URL

from gateway.backends.http_client import (
    HIGH_WATER,
    MAX_BODY,
    BadResponse,
    CannotConnect,
    CutShort,
    Disconnected,
    TooLarge,
    UpstreamClient,
    UpstreamError,
)
from gateway.runtime import RUNTIME
from tests.support import binaries
from tests.support.processes import free_port

# ---------------------------------------------------------------- a scripted server


@dataclass
class Request:
    line: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


class Peer:
    """One accepted connection, as the server's script sees it."""

    def __init__(self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server, self.reader, self.writer = server, reader, writer
        self.requests: list[Request] = []
        self.left = asyncio.Event()
        self._left: asyncio.Future | None = None
        self._in_request = False

    async def request(self) -> Request | None:
        """The next request on this connection; None if the client closed it instead."""
        self._in_request = True
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.left.set()
            return None
        finally:
            self._in_request = False
        lines = head[:-4].decode("latin-1").split("\r\n")
        headers = [(name, value.strip()) for name, value in (line.split(":", 1) for line in lines[1:])]
        length = sum(int(value) for name, value in headers if name.lower() == "content-length")
        body = await self.reader.readexactly(length)
        request = Request(lines[0], headers, body, head + body)
        self.requests.append(request)
        self.server.requests.append(request)
        return request

    async def send(self, *parts: bytes, pause: float = 0.0) -> None:
        """Each part in its own write, drained, with `pause` seconds between them."""
        for i, part in enumerate(parts):
            if i and pause:
                await asyncio.sleep(pause)
            self.writer.write(part)
            await self.writer.drain()

    async def client_left(self) -> bool:
        """Wait for the client's end of the connection to close (EOF, or a reset if it had
        unread bytes when it closed). The script and the test may both wait for it."""
        if self._left is None and not self._in_request:
            self._left = asyncio.ensure_future(self._read_to_the_end())
        await self.left.wait()
        return True

    async def _read_to_the_end(self) -> None:
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.left.set()

    async def hang(self) -> None:
        """Keep the connection open, silent, until the test ends."""
        await self.server.done.wait()

    def close(self) -> None:
        self.writer.close()


Script = Callable[[Peer], Awaitable[None]]


@dataclass
class Server:
    script: Script
    tls: ssl.SSLContext | None = None
    peers: list[Peer] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return len(self.peers)

    async def start(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/v1/messages", host: str = "127.0.0.1") -> URL:
        return URL(f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        peer = Peer(self, reader, writer)
        self.peers.append(peer)
        try:
            await self.script(peer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        self.done.set()
        self._server.close()
        for peer in self.peers:
            peer.writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


class Servers:
    """`await servers(script)`: a started server running `script` on each connection;
    `stop()` ends them all."""

    def __init__(self) -> None:
        self.started: list[Server] = []

    async def __call__(self, script: Script, tls: ssl.SSLContext | None = None) -> Server:
        server = await Server(script, tls).start()
        self.started.append(server)
        return server

    async def stop(self) -> None:
        for server in self.started:
            await server.stop()


@pytest.fixture
async def serve():
    servers = Servers()
    yield servers
    await servers.stop()


@pytest.fixture
async def http():
    client = UpstreamClient()
    yield client
    await client.close()


def answer(body: bytes = b"", status: str = "200 OK", headers: tuple[str, ...] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


CHUNKED = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def answering(*answers: bytes) -> Script:
    """A keep-alive server: the next of `answers` to each request on any of its connections
    (the last one repeated)."""
    n = 0

    async def script(peer: Peer) -> None:
        nonlocal n
        while await peer.request() is not None:
            n += 1
            await peer.send(answers[min(n, len(answers)) - 1])

    return script


async def post(
    client: UpstreamClient,
    url: URL,
    body: bytes = b'{"model": "m"}',
    headers: dict | None = None,
    *,
    connect: float = 2.0,
    first_byte: float = 2.0,
    total: float = 5.0,
    stream: bool = False,
    max_body: int = MAX_BODY,
):
    return await client.post(
        url, body, headers or {}, connect=connect, first_byte=first_byte, total=total, stream=stream, max_body=max_body
    )


async def read_all(client: UpstreamClient, url: URL, **kwargs) -> tuple[int, bytes]:
    response = await post(client, url, **kwargs)
    try:
        return response.status, await response.read()
    finally:
        response.close()


async def settle() -> None:
    """Let the loop deliver what the other end of a local socket just did (a FIN, a write):
    the client learns of it in a callback, which has no awaitable of its own."""
    await asyncio.sleep(0.05)


# ---------------------------------------------------------------- a whole answer, and the request on the wire


async def test_a_content_length_answer_and_the_request_as_sent(serve, http):
    server = await serve(
        answering(
            answer(b'{"ok": true}', "201 Created", ("Content-Type: application/json", "X-Trace: a", "x-trace: b"))
        )
    )
    url = server.url("/v1/messages?beta=true")
    response = await post(http, url, b'{"model": "m"}', {"x-api-key": "k-1", "Anthropic-Version": "2023-06-01"})
    assert response.status == 201
    assert response.headers["content-type"] == response.headers["CONTENT-TYPE"] == "application/json"
    assert response.headers.getall("X-TRACE") == ["a", "b"]
    assert await response.read() == b'{"ok": true}'
    assert response.at_eof()
    response.close()

    [request] = server.requests
    assert request.line == "POST /v1/messages?beta=true HTTP/1.1"
    assert request.header("host") == [f"127.0.0.1:{server.port}"]
    assert request.header("content-length") == ["14"]
    assert request.header("accept-encoding") == ["gzip, deflate"]
    assert request.header("x-api-key") == ["k-1"]
    assert request.header("anthropic-version") == ["2023-06-01"]
    assert request.body == b'{"model": "m"}'


async def test_the_callers_accept_encoding_is_kept_and_its_host_and_length_are_not(serve, http):
    server = await serve(answering(answer(b"ok")))
    headers = {"Accept-Encoding": "identity", "Host": "elsewhere", "Content-Length": "999"}
    assert await read_all(http, server.url(), body=b"abc", headers=headers) == (200, b"ok")
    [request] = server.requests
    assert request.header("accept-encoding") == ["identity"]
    assert request.header("host") == [f"127.0.0.1:{server.port}"]
    assert request.header("content-length") == ["3"]


async def test_a_large_request_body_arrives_whole(serve, http):
    server = await serve(answering(answer(b"ok")))
    body = bytes(range(256)) * 4096  # 1 MiB: written apart from the head
    assert await read_all(http, server.url(), body=body) == (200, b"ok")
    assert server.requests[0].body == body


async def test_an_error_status_is_an_answer_not_an_exception(serve, http):
    server = await serve(answering(answer(b'{"error": "busy"}', "429 Too Many Requests", ("Retry-After: 3",))))
    response = await post(http, server.url())
    assert (response.status, response.headers["retry-after"]) == (429, "3")
    assert await response.read() == b'{"error": "busy"}'
    response.close()


async def test_a_204_has_no_body_and_keeps_its_connection(serve, http):
    server = await serve(answering(b"HTTP/1.1 204 No Content\r\n\r\n"))
    assert await read_all(http, server.url()) == (204, b"")
    assert await read_all(http, server.url()) == (204, b"")
    assert server.accepted == 1


# ---------------------------------------------------------------- keep-alive


async def test_calls_in_a_row_share_one_connection(serve, http):
    server = await serve(answering(answer(b"one"), answer(b"two"), answer(b"three")))
    assert [await read_all(http, server.url()) for _ in range(3)] == [(200, b"one"), (200, b"two"), (200, b"three")]
    assert server.accepted == 1


async def test_concurrent_calls_each_get_a_connection_then_share_them(serve, http):
    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            await asyncio.sleep(0.05)  # so the calls overlap
            await peer.send(answer(b"ok"))

    server = await serve(script)
    results = await asyncio.gather(*(read_all(http, server.url()) for _ in range(3)))
    assert results == [(200, b"ok")] * 3 and server.accepted == 3
    await asyncio.gather(*(read_all(http, server.url()) for _ in range(3)))
    assert server.accepted == 3


async def test_a_connection_the_server_closed_while_idle_is_not_reused(serve, http):
    async def one_answer_then_close(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer(b"ok"))
        await asyncio.sleep(0.02)  # so the FIN finds the connection idle in the pool, not with the answer
        peer.close()

    server = await serve(one_answer_then_close)
    assert await read_all(http, server.url()) == (200, b"ok")
    await asyncio.sleep(0.1)
    assert await read_all(http, server.url()) == (200, b"ok")
    assert server.accepted == 2


def closing_as_reused(answers_first: int = 1, *, reset: bool = False) -> Script:
    """A server that answers `answers_first` requests on a connection, then reads the next
    one and closes (or resets) without a byte of answer: its idle timeout and the client's
    reuse crossed on the wire. New connections are answered in full."""

    async def script(peer: Peer) -> None:
        for _ in range(answers_first):
            if await peer.request() is None:
                return
            await peer.send(answer(b"ok"))
        if await peer.request() is None:
            return
        if reset:
            peer.writer.transport.abort()
        else:
            peer.close()

    return script


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
async def test_a_pooled_connection_closed_as_it_is_reused_is_retried_once_on_a_new_one(serve, http, reset):
    server = await serve(closing_as_reused(reset=reset))
    assert await read_all(http, server.url()) == (200, b"ok")
    assert await read_all(http, server.url()) == (200, b"ok")  # the first connection died under it
    assert server.accepted == 2
    assert [len(peer.requests) for peer in server.peers] == [2, 1]  # sent again, once, on the new one


async def test_a_new_connection_that_closes_without_answering_is_not_retried(serve, http):
    async def close_at_once(peer: Peer) -> None:
        await peer.request()
        peer.close()

    server = await serve(close_at_once)
    with pytest.raises(Disconnected):
        await read_all(http, server.url())
    assert server.accepted == 1  # the server read the request on a fresh connection: its answer


async def test_a_reused_connection_that_closes_after_some_bytes_is_not_retried(serve, http):
    async def half_then_close(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer(b"ok"))
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-")
        peer.close()

    server = await serve(half_then_close)
    assert await read_all(http, server.url()) == (200, b"ok")
    with pytest.raises(Disconnected):
        await read_all(http, server.url())
    assert server.accepted == 1  # an answer had begun: the request may have run


async def test_a_stale_connection_is_retried_only_once(serve, http):
    """Both the pooled connection and the new one close without a byte: the second is the
    server's answer, not a stale pool."""
    calls = 0

    async def script(peer: Peer) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await peer.request()
            await peer.send(answer(b"ok"))
        await peer.request()
        peer.close()

    server = await serve(script)
    assert await read_all(http, server.url()) == (200, b"ok")
    with pytest.raises(Disconnected):
        await read_all(http, server.url())
    assert server.accepted == 2


async def test_through_the_gateway_a_stale_pooled_connection_is_no_upstream_failure(serve):
    """With a breaker that opens on one failure and no retries, the race between the
    server's idle close and the gateway's reuse would have cost a 5xx and a cooldown."""
    from tests.support.servers import CLIENT_HEADERS, gateway_config, start_gateway

    completion = orjson.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    )

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer(completion, headers=("Content-Type: application/json",)))
        await peer.request()
        peer.close()

    server = await serve(script)
    base = f"http://127.0.0.1:{server.port}"
    running = await start_gateway(gateway_config(base, routing="{retries: 0, cooldown: {failures: 1}}"))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.post(
                    f"{running.url}/v1/messages",
                    headers=CLIENT_HEADERS,
                    json={"model": "chat-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
                ) as response:
                    assert response.status == 200, await response.text()
        router = running.app[RUNTIME].routes.router
        assert router.breaker(router.resolve("chat-model").primary).pristine
        assert server.accepted == 2
    finally:
        await running.runner.cleanup()


async def test_keepalive_is_chosen_per_call(serve):
    server = await serve(answering(answer(b"ok")))
    client = UpstreamClient(keepalive=60)
    try:
        assert await read_all(client, server.url()) == (200, b"ok")
        response = await client.post(server.url(), b"{}", {}, connect=2, first_byte=2, total=5, keepalive=0)
        await response.read()
        response.close()
        assert server.accepted == 2  # keepalive 0: never reuse
    finally:
        await client.close()


async def test_a_connection_idle_longer_than_keepalive_is_not_reused(serve):
    server = await serve(answering(answer(b"ok")))
    client = UpstreamClient(keepalive=0.05)
    try:
        assert await read_all(client, server.url()) == (200, b"ok")
        assert await read_all(client, server.url()) == (200, b"ok")
        assert server.accepted == 1
        await asyncio.sleep(0.2)
        assert await read_all(client, server.url()) == (200, b"ok")
        assert server.accepted == 2
        # The stale one is closed, not just forgotten: the server sees it end.
        assert await asyncio.wait_for(server.peers[0].client_left(), 2)
    finally:
        await client.close()


@pytest.mark.parametrize(
    "ending",
    [
        pytest.param(answer(b"ok", headers=("Connection: close",)), id="connection-close"),
        pytest.param(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", id="http-1.0"),
    ],
)
async def test_an_answer_that_ends_its_connection_is_not_reused(serve, http, ending):
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(ending)
        await peer.client_left()  # the client closes it without being told to by a FIN

    server = await serve(script)
    assert await read_all(http, server.url()) == (200, b"ok")
    assert await asyncio.wait_for(server.peers[0].client_left(), 2)
    assert await read_all(http, server.url()) == (200, b"ok")
    assert server.accepted == 2


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", id="longer-than-declared"),
        pytest.param(answer(b"ok") + answer(b"unasked"), id="a-second-answer"),
        pytest.param(answer(b"ok") + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", id="a-second-head"),
    ],
)
async def test_bytes_after_the_answer_end_its_connection(serve, http, sent):
    server = await serve(answering(sent, answer(b"second")))
    assert await read_all(http, server.url()) == (200, b"ok")
    await settle()
    # Two at once: a connection left twice in the pool would be handed to both.
    results = await asyncio.gather(*(read_all(http, server.url(), first_byte=1) for _ in range(2)))
    assert results == [(200, b"second")] * 2
    assert await asyncio.wait_for(server.peers[0].client_left(), 2)


async def test_bytes_nobody_asked_for_on_an_idle_connection_end_it(serve, http):
    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(answer(b"ok"))
            if len(server.requests) == 1:
                await asyncio.sleep(0.02)
                await peer.send(answer(b"unasked"))

    server = await serve(script)
    assert await read_all(http, server.url()) == (200, b"ok")
    await asyncio.sleep(0.1)
    assert await read_all(http, server.url()) == (200, b"ok")
    assert server.accepted == 2


# ---------------------------------------------------------------- chunked streams


async def test_a_chunked_stream_read_as_it_comes(serve, http):
    events = [b"event: message_start\ndata: {}\n\n", b"data: " + b"x" * 5000 + b"\n\n", b"event: message_stop\n\n"]
    go = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED + chunk(events[0]))
        await go.wait()
        # A chunk's size line, its data and its end each in a write of their own.
        size, rest = chunk(events[1]).split(b"\r\n", 1)
        await peer.send(size + b"\r\n", rest[:100], rest[100:], chunk(events[2]), LAST_CHUNK, pause=0.03)
        await peer.request()  # the connection is kept: the next call's answer
        await peer.send(answer(b"again"))

    server = await serve(script)
    response = await post(http, server.url(), stream=True)
    assert (response.status, response.headers["transfer-encoding"]) == (200, "chunked")
    assert await response.read_some() == events[0]
    assert response.take() == b"" and not response.at_eof()
    go.set()
    received = b""
    while not response.at_eof():
        received += await response.read_some()
    assert received == b"".join(events[1:])
    assert await response.read_some() == b"" and response.take() == b""
    response.close()
    assert await read_all(http, server.url()) == (200, b"again")
    assert server.accepted == 1


async def test_take_returns_what_has_arrived(serve, http):
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED + chunk(b"a"), chunk(b"b"), chunk(b"c") + LAST_CHUNK, pause=0.02)

    server = await serve(script)
    response = await post(http, server.url(), stream=True)
    received = b""
    for _ in range(200):
        received += response.take()
        if response.at_eof():
            break
        await asyncio.sleep(0.01)
    assert received == b"abc" and response.at_eof()
    response.close()


async def test_read_gathers_a_whole_chunked_answer(serve, http):
    parts = [b"{", b'"a": 1', b", ", b'"b": [' + b"2, " * 1000 + b"3]", b"}"]

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED, *map(chunk, parts), LAST_CHUNK, pause=0.01)

    server = await serve(script)
    assert await read_all(http, server.url()) == (200, b"".join(parts))


async def test_a_chunked_answer_with_trailers(serve, http):
    server = await serve(answering(CHUNKED + chunk(b"body") + b"0\r\nX-Checksum: 1\r\n\r\n"))
    assert await read_all(http, server.url()) == (200, b"body")
    assert await read_all(http, server.url()) == (200, b"body")
    assert server.accepted == 1


# ---------------------------------------------------------------- a body that ends with its connection


async def test_a_body_delimited_by_the_close_of_its_connection(serve, http):
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n", b"first ", b"second", pause=0.03)
        peer.close()

    server = await serve(script)
    assert await read_all(http, server.url()) == (200, b"first second")
    assert await read_all(http, server.url(), stream=True) == (200, b"first second")
    assert server.accepted == 2


async def test_a_reset_in_a_body_delimited_by_its_connection_cuts_it_short(serve, http):
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n", b"partial")
        # RST, not FIN (SO_LINGER 0): the body did not end, it was cut.
        peer.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.writer.transport.abort()

    server = await serve(script)
    response = await post(http, server.url())
    with pytest.raises(CutShort):
        await response.read()
    response.close()


# ---------------------------------------------------------------- compressed answers

TEXT = b"".join(b'data: {"index": %d, "text": "the quick brown fox"}\n\n' % i for i in range(400))


@pytest.mark.parametrize(
    "encoding, compress", [("gzip", gzip.compress), ("deflate", zlib.compress), ("x-gzip", gzip.compress)]
)
async def test_a_compressed_answer_is_decoded_whole(serve, http, encoding, compress):
    server = await serve(answering(answer(compress(TEXT), headers=(f"Content-Encoding: {encoding}",))))
    assert await read_all(http, server.url()) == (200, TEXT)


@pytest.mark.parametrize("encoding, compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
async def test_a_compressed_stream_is_decoded_in_small_pieces(serve, http, encoding, compress):
    packed = compress(TEXT)
    pieces = [packed[i : i + 7] for i in range(0, len(packed), 7)]

    async def script(peer: Peer) -> None:
        await peer.request()
        head = f"HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        await peer.send(head)
        for i, piece in enumerate(pieces):
            await peer.send(chunk(piece))
            if i % 20 == 0:
                await asyncio.sleep(0.002)
        await peer.send(LAST_CHUNK)

    server = await serve(script)
    response = await post(http, server.url(), stream=True)
    received, reads = b"", 0
    while data := await response.read_some():
        received += data
        reads += 1
    response.close()
    assert received == TEXT and reads > 1


async def test_an_encoding_the_client_cannot_decode_is_a_bad_response(serve, http):
    server = await serve(answering(answer(b"\x1b\x00\x00", headers=("Content-Encoding: br",))))
    with pytest.raises(BadResponse, match="br"):
        await post(http, server.url())


async def test_a_corrupt_compressed_body_is_a_bad_response(serve, http):
    server = await serve(answering(answer(b"this is not gzip at all", headers=("Content-Encoding: gzip",))))
    response = await post(http, server.url())
    with pytest.raises(BadResponse):
        await response.read()
    response.close()


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-15)
    return packer.compress(data) + packer.flush()


async def test_deflate_without_its_zlib_header_is_decoded_too(serve, http):
    # RFC 9110 says deflate is zlib-wrapped; some servers send the bare stream all the same.
    server = await serve(answering(answer(raw_deflate(TEXT), headers=("Content-Encoding: deflate",))))
    assert await read_all(http, server.url()) == (200, TEXT)


@pytest.mark.parametrize(
    "encoding, compress", [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", raw_deflate)]
)
async def test_a_compressed_body_that_stops_before_its_end_is_a_bad_response(serve, http, encoding, compress):
    # Whole by its Content-Length, cut short by its compressed stream's own end marker.
    packed = compress(TEXT)[:-12]
    server = await serve(answering(answer(packed, headers=(f"Content-Encoding: {encoding}",))))
    response = await post(http, server.url())
    with pytest.raises(BadResponse, match="ends early"):
        await response.read()
    response.close()


# ---------------------------------------------------------------- answers past max_body

CAP = 1024 * 1024


def endless(head: bytes, piece: bytes) -> Script:
    """Answers with `head`, then `piece` again and again until the client leaves."""

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(head)
        while not peer.left.is_set():
            await peer.send(piece)
            await asyncio.sleep(0)
        await peer.client_left()

    return script


async def then_answers_again(server: Server, http: UpstreamClient) -> None:
    """The connection of the refused answer was dropped, not pooled: the next call gets an
    answer on a new one."""
    await asyncio.wait_for(server.peers[0].client_left(), 5)
    assert await read_all(http, server.url()) == (200, b"ok")
    assert server.accepted == 2


def then_ok(script: Script) -> Script:
    """`script` on the first connection, a plain `ok` on every later one."""

    async def either(peer: Peer) -> None:
        if peer.server.accepted == 1:
            await script(peer)
        else:
            await answering(answer(b"ok"))(peer)

    return either


@pytest.mark.parametrize(
    "head, piece",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2000000000\r\n\r\n", b"x" * 65536, id="content-length"),
        pytest.param(CHUNKED, chunk(b"x" * 65536), id="chunked"),
        pytest.param(b"HTTP/1.1 200 OK\r\n\r\n", b"x" * 65536, id="until-close"),
        pytest.param(
            b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n",
            chunk(b"x" * 65536),
            id="error-status",
        ),
    ],
)
async def test_a_whole_answer_past_max_body_is_too_large_and_its_connection_dropped(serve, http, head, piece):
    server = await serve(then_ok(endless(head, piece)))
    response = await post(http, server.url(), max_body=CAP)
    with pytest.raises(TooLarge) as caught:
        await response.read()
    response.close()
    assert caught.value.limit == CAP
    await then_answers_again(server, http)


async def test_an_answer_of_exactly_max_body_is_read_whole(serve, http):
    body = bytes(range(256)) * (CAP // 256)
    server = await serve(answering(answer(body), answer(gzip.compress(body), headers=("Content-Encoding: gzip",))))
    assert await read_all(http, server.url(), max_body=CAP) == (200, body)
    assert await read_all(http, server.url(), max_body=CAP) == (200, body)  # inflated to exactly the cap
    assert server.accepted == 1


# 64 MiB of zeros: under 70 KB on the wire, one gzip or deflate stream.
ZEROS = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    zeros = bytes(ZEROS)
    return {"gzip": gzip.compress(zeros, 9), "deflate": zlib.compress(zeros, 9), "raw-deflate": raw_deflate(zeros)}


@pytest.mark.parametrize("kind", ["gzip", "deflate", "raw-deflate"])
async def test_a_compression_bomb_is_too_large_once_inflated_past_max_body(serve, http, bombs, kind):
    packed = bombs[kind]
    assert len(packed) < 100_000
    encoding = "gzip" if kind == "gzip" else "deflate"
    server = await serve(then_ok(answering(answer(packed, headers=(f"Content-Encoding: {encoding}",)))))
    response = await post(http, server.url(), max_body=CAP)
    with pytest.raises(TooLarge):
        await response.read()
    response.close()
    await then_answers_again(server, http)


async def test_a_stream_is_bounded_by_what_it_holds_unread_not_by_its_length(serve, http):
    # Three times the cap, read as it comes: a stream is relayed, not held.
    pieces = [bytes([i]) * 65536 for i in range(3 * CAP // 65536)]
    server = await serve(answering(CHUNKED + b"".join(map(chunk, pieces)) + LAST_CHUNK))
    response = await post(http, server.url(), stream=True, max_body=CAP)
    received = b""
    while data := await response.read_some():
        received += data
    response.close()
    assert received == b"".join(pieces)


async def test_a_stream_whose_one_read_inflates_past_max_body_is_too_large(serve, http, bombs):
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = await serve(then_ok(answering(head + chunk(bombs["gzip"]) + LAST_CHUNK)))
    response = await post(http, server.url(), stream=True, max_body=CAP)
    with pytest.raises(TooLarge):
        while await response.read_some():
            pass
    response.close()
    await then_answers_again(server, http)


async def test_a_refused_streams_error_body_is_read_whole_and_bounded(serve, http):
    head = b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = await serve(then_ok(endless(head, chunk(b"e" * 65536))))
    response = await post(http, server.url(), stream=True, max_body=CAP)
    assert response.status == 400
    with pytest.raises(TooLarge):
        await response.read()
    response.close()
    await then_answers_again(server, http)


# ---------------------------------------------------------------- errors


async def test_nothing_listening_is_cannot_connect(http):
    with pytest.raises(CannotConnect):
        await post(http, URL(f"http://127.0.0.1:{free_port()}/v1/messages"))


async def test_a_url_that_is_not_http_is_cannot_connect(http):
    with pytest.raises(CannotConnect):
        await post(http, URL("ftp://127.0.0.1/file"))


async def test_a_server_that_closes_without_answering_is_disconnected(serve, http):
    async def script(peer: Peer) -> None:
        await peer.request()
        peer.close()

    server = await serve(script)
    with pytest.raises(Disconnected) as caught:
        await post(http, server.url())
    assert not isinstance(caught.value, CutShort)


async def test_a_server_that_closes_in_the_middle_of_the_headers_is_disconnected(serve, http):
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Le")
        peer.close()

    server = await serve(script)
    with pytest.raises(Disconnected) as caught:
        await post(http, server.url())
    assert not isinstance(caught.value, CutShort)


@pytest.mark.parametrize(
    "head, sent",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"only part", id="content-length"),
        pytest.param(CHUNKED, chunk(b"only part") + b"40\r\nhalf", id="chunked"),
    ],
)
async def test_a_server_that_closes_in_the_middle_of_the_body_cuts_it_short(serve, http, head, sent):
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(head, sent, pause=0.02)
        await asyncio.sleep(0.02)
        peer.close()

    server = await serve(script)
    response = await post(http, server.url())
    with pytest.raises(CutShort):
        await response.read()
    response.close()

    response = await post(http, server.url(), stream=True)
    assert (await response.read_some()).startswith(b"only part")
    with pytest.raises(CutShort):
        while await response.read_some():
            pass
    response.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"<html>hello</html>\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
    ],
)
async def test_an_answer_that_is_not_http_is_a_bad_response(serve, http, garbage):
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(garbage)
        await peer.hang()

    server = await serve(script)
    with pytest.raises(BadResponse):
        await post(http, server.url(), first_byte=2)


async def test_switching_protocols_is_a_bad_response(serve, http):
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        await peer.hang()

    server = await serve(script)
    with pytest.raises(BadResponse):
        await post(http, server.url())


async def test_every_failure_is_an_upstream_error():
    assert all(issubclass(kind, UpstreamError) for kind in (CannotConnect, Disconnected, CutShort, BadResponse))


# ---------------------------------------------------------------- timeouts


def _silent(peer_answer: bytes = b"") -> Script:
    async def script(peer: Peer) -> None:
        await peer.request()
        if peer_answer:
            await peer.send(peer_answer)
        await peer.hang()

    return script


async def test_no_answer_at_all_times_out_after_first_byte(serve, http):
    server = await serve(_silent())
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await post(http, server.url(), first_byte=0.3, total=10)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 5


async def test_total_bounds_the_wait_for_the_headers(serve, http):
    server = await serve(_silent())
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await post(http, server.url(), first_byte=10, total=0.3)
    assert 0.25 <= time.monotonic() - started < 5


@pytest.mark.parametrize(
    "head, stream",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome of it", False),
        # A stream that is not 200 is an error body, read whole: timed like a whole answer.
        (b'HTTP/1.1 500 Internal Server Error\r\nContent-Length: 100\r\n\r\n{"err', True),
    ],
    ids=["whole answer", "stream refused"],
)
async def test_a_whole_answer_whose_body_goes_silent_times_out(serve, http, head, stream):
    server = await serve(_silent(head))
    response = await post(http, server.url(), stream=stream, first_byte=0.3, total=10)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await response.read()
    assert time.monotonic() - started < 5
    response.close()


async def test_a_whole_answer_waiting_for_its_reader_is_not_timed_out(serve, http):
    # Past HIGH_WATER the client stops reading: the silence that follows is the reader's.
    body = bytes(4 * HIGH_WATER)
    server = await serve(answering(answer(body)))
    response = await post(http, server.url(), first_byte=0.2, total=10)
    await asyncio.sleep(0.5)
    assert await response.read() == body
    response.close()


async def test_a_whole_answer_that_keeps_coming_is_not_timed_out_by_first_byte(serve, http):
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n", *[b"ab"] * 4, pause=0.12)

    server = await serve(script)
    # Longer than first_byte in all, never that long silent.
    assert await read_all(http, server.url(), first_byte=0.3, total=10) == (200, b"abababab")


async def test_a_streams_silence_after_its_headers_is_its_readers_to_judge(serve, http):
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED + chunk(b"first"), chunk(b"second") + LAST_CHUNK, pause=0.4)

    server = await serve(script)
    response = await post(http, server.url(), stream=True, first_byte=0.15, total=10)
    assert await response.read() == b"firstsecond"
    response.close()


async def test_total_still_ends_a_silent_stream(serve, http):
    server = await serve(_silent(CHUNKED + chunk(b"first")))
    started = time.monotonic()
    response = await post(http, server.url(), stream=True, first_byte=0.1, total=0.4)
    assert await response.read_some() == b"first"
    with pytest.raises(TimeoutError):
        await response.read_some()
    assert 0.35 <= time.monotonic() - started < 5
    response.close()


async def test_a_timed_out_connection_is_not_reused(serve, http):
    answered = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.request()
        if not answered.is_set():
            answered.set()
            await peer.client_left()  # the client gave up on this one
            return
        await peer.send(answer(b"ok"))

    server = await serve(script)
    with pytest.raises(TimeoutError):
        await post(http, server.url(), first_byte=0.2)
    assert await asyncio.wait_for(server.peers[0].client_left(), 2)
    assert await read_all(http, server.url()) == (200, b"ok")
    assert server.accepted == 2


# ---------------------------------------------------------------- interim answers


async def test_an_interim_100_continue_is_skipped(serve, http):
    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(
                b"HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n", answer(b"ok", headers=("X-Real: 1",)), pause=0.02
            )

    server = await serve(script)
    response = await post(http, server.url())
    assert response.status == 200 and response.headers["x-real"] == "1" and "x-interim" not in response.headers
    assert await response.read() == b"ok"
    response.close()
    assert await read_all(http, server.url()) == (200, b"ok")
    assert server.accepted == 1


async def test_several_interim_answers_in_one_write_are_skipped(serve, http):
    server = await serve(
        answering(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + answer(b"ok"))
    )
    assert await read_all(http, server.url()) == (200, b"ok")


# ---------------------------------------------------------------- closing an answer early


def _left_on_first(left: asyncio.Event, sent: bytes = b"") -> Script:
    """On the first connection: send `sent`, then set `left` once the client drops it; on
    any other, answer `ok`."""

    async def script(peer: Peer) -> None:
        if await peer.request() is None:
            return
        if peer is peer.server.peers[0]:
            if sent:
                await peer.send(sent)
            await peer.client_left()
            left.set()
        else:
            await peer.send(answer(b"ok"))

    return script


async def test_closing_an_answer_before_its_end_drops_its_connection(serve, http):
    left = asyncio.Event()
    server = await serve(_left_on_first(left, CHUNKED + chunk(b"first")))
    response = await post(http, server.url(), stream=True)
    assert await response.read_some() == b"first"
    response.close()
    await asyncio.wait_for(left.wait(), 2)  # the upstream is told to stop generating
    with pytest.raises(CutShort):
        await response.read_some()
    assert await read_all(http, server.url()) == (200, b"ok")
    assert server.accepted == 2


# ---------------------------------------------------------------- flow control


async def test_a_large_stream_read_slowly_arrives_whole_and_in_order(serve, http):
    piece = 64 * 1024
    size = 6 * 1024 * 1024
    payload = b"".join(i.to_bytes(4, "big") for i in range(size // 4))
    written = 0

    async def script(peer: Peer) -> None:
        nonlocal written
        await peer.request()
        await peer.send(CHUNKED)
        for i in range(0, size, piece):
            await peer.send(chunk(payload[i : i + piece]))
            written = i + piece
        await peer.send(LAST_CHUNK)

    server = await serve(script)
    response = await post(http, server.url(), stream=True)
    received = bytearray()
    while data := await response.read_some():
        # Reading stops once the mark is passed, so no more than one socket read (256 KiB
        # with asyncio's and uvloop's transports) lands beyond it.
        assert len(data) <= HIGH_WATER + 256 * 1024
        received += data
        await asyncio.sleep(0.002)
    response.close()
    assert written == size
    assert bytes(received) == payload


async def test_an_answer_that_ends_past_the_high_water_mark_leaves_its_connection_usable(serve, http):
    # 8 MiB of zeros gzip to ~8 KiB: one read on the wire, and far past the mark once inflated.
    inflated = bytes(8 * 1024 * 1024)
    server = await serve(
        answering(answer(gzip.compress(inflated), headers=("Content-Encoding: gzip",)), answer(b"second"))
    )
    assert await read_all(http, server.url()) == (200, inflated)
    assert await read_all(http, server.url(), first_byte=0.3) == (200, b"second")


async def test_a_large_answer_read_after_it_arrived_leaves_its_connection_usable(serve, http):
    first, last = bytes(250 * 1024), b"x" * (20 * 1024)  # under the mark, then past it in the read that ends it

    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            if len(server.requests) == 1:
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(first) + len(last)}\r\n\r\n".encode()
                await peer.send(head + first, last, pause=0.05)
            else:
                await peer.send(answer(b"second"))

    server = await serve(script)
    response = await post(http, server.url())
    await asyncio.sleep(0.12)  # the caller is busy elsewhere while the whole answer arrives
    assert await response.read() == first + last
    response.close()
    assert await read_all(http, server.url(), first_byte=0.3) == (200, b"second")


async def test_a_call_cancelled_while_waiting_for_its_answer_drops_its_connection(serve, http):
    left = asyncio.Event()
    server = await serve(_left_on_first(left))
    call = asyncio.ensure_future(post(http, server.url()))
    while not server.requests:
        await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(left.wait(), 2)
    assert await read_all(http, server.url()) == (200, b"ok")
    assert server.accepted == 2


# ---------------------------------------------------------------- header injection


@pytest.mark.parametrize(
    "headers", [{"x-note": "a\r\nx-injected: 1"}, {"x-note": "a\nb"}, {"x-note": "a\rb"}, {"x-bad\r\nx-injected": "1"}]
)
async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent(serve, http, headers):
    server = await serve(answering(answer(b"ok")))
    with pytest.raises(ValueError):
        await post(http, server.url(), headers=headers)
    await settle()
    assert server.accepted == 0
    assert await read_all(http, server.url()) == (200, b"ok")
    with pytest.raises(ValueError):
        await post(http, server.url(), headers=headers)  # with an idle connection at hand
    assert await read_all(http, server.url()) == (200, b"ok")
    assert server.accepted == 1 and len(server.requests) == 2
    assert all(not request.header("x-injected") for request in server.requests)


# ---------------------------------------------------------------- TLS


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate it signed for localhost (not for 127.0.0.1):
    (CA, certificate, key) files."""
    try:
        return _certificates_with_cryptography(directory)
    except ImportError:
        pass
    binaries.require("openssl", "apt-get install openssl, or pip install cryptography")
    return _certificates_with_openssl(directory)


def _certificates_with_openssl(directory: Path) -> tuple[Path, Path, Path]:
    ca, ca_key, cert, key, csr, ext = (
        directory / name for name in ("ca.pem", "ca.key", "server.pem", "server.key", "server.csr", "san.ext")
    )
    ext.write_text("subjectAltName=DNS:localhost\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=upstream-test-ca"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        [
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "1",
            "-extfile",
            ext,
        ],
    ]
    for step in steps:
        subprocess.run(["openssl", *map(str, step)], check=True, capture_output=True, cwd=directory)
    return ca, cert, key


def _certificates_with_cryptography(directory: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key, issuer: str, signer, *, ca: bool):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("upstream-test-ca", ca_key, "upstream-test-ca", ca_key, ca=True)
    leaf = certificate("localhost", server_key, "upstream-test-ca", ca_key, ca=False)
    files = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    files[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> tuple[Path, Path, Path]:
    return _certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls(certificates) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(the server's context, a client context that trusts the server's CA)."""
    ca, cert, key = certificates
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(ca))


async def test_https_with_a_context_that_trusts_the_servers_ca(serve, tls):
    server_context, client_context = tls
    server = await serve(answering(answer(b"secret ok")), tls=server_context)
    client = UpstreamClient(ssl_context=client_context)
    try:
        url = server.url(host="localhost")
        assert await read_all(client, url) == (200, b"secret ok")
        assert await read_all(client, url) == (200, b"secret ok")
        assert server.accepted == 1
        assert server.requests[0].header("host") == [f"localhost:{server.port}"]
    finally:
        await client.close()


async def test_https_with_the_default_context_cannot_connect_to_a_private_ca(serve, tls, http):
    server = await serve(answering(answer(b"secret ok")), tls=tls[0])
    with pytest.raises(CannotConnect):
        await post(http, server.url(host="localhost"))
    assert not server.requests


async def test_https_to_a_name_the_certificate_is_not_for_cannot_connect(serve, tls):
    server = await serve(answering(answer(b"secret ok")), tls=tls[0])
    client = UpstreamClient(ssl_context=tls[1])
    try:
        with pytest.raises(CannotConnect):
            await post(client, server.url(host="127.0.0.1"))
    finally:
        await client.close()


async def test_connect_bounds_the_tls_handshake(serve):
    server = await serve(_silent())  # plain TCP that never answers the ClientHello
    client = UpstreamClient()
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            await client.post(URL(f"https://localhost:{server.port}/"), b"", {}, connect=0.3, first_byte=10, total=10)
    finally:
        await client.close()
    assert 0.25 <= time.monotonic() - started < 5


# ---------------------------------------------------------------- closing the client


async def test_closing_the_client_drops_its_idle_connections(serve):
    server = await serve(answering(answer(b"ok")))
    client = UpstreamClient()
    assert await read_all(client, server.url()) == (200, b"ok")
    await client.close()
    assert await asyncio.wait_for(server.peers[0].client_left(), 2)
    with pytest.raises(CannotConnect):
        await post(client, server.url())
    assert server.accepted == 1


async def test_an_answer_finished_after_the_client_closed_does_not_keep_its_connection(serve):
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED + chunk(b"a"), chunk(b"b") + LAST_CHUNK, pause=0.1)
        await peer.client_left()
        left.set()

    left = asyncio.Event()
    server = await serve(script)
    client = UpstreamClient()
    response = await post(client, server.url(), stream=True)
    await client.close()
    assert await response.read() == b"ab"
    response.close()
    await asyncio.wait_for(left.wait(), 2)


# ---------------------------------------------------------------- under uvloop, as the gateway runs it

# The behaviours that lean on the event loop's transports (EOF while idle, pause and
# resume, abort, timers), run again on the loop `gateway serve` installs.
UNDER_UVLOOP = [
    test_a_content_length_answer_and_the_request_as_sent,
    test_calls_in_a_row_share_one_connection,
    test_a_connection_the_server_closed_while_idle_is_not_reused,
    test_bytes_nobody_asked_for_on_an_idle_connection_end_it,
    test_a_chunked_stream_read_as_it_comes,
    test_a_body_delimited_by_the_close_of_its_connection,
    test_a_server_that_closes_without_answering_is_disconnected,
    test_switching_protocols_is_a_bad_response,
    test_no_answer_at_all_times_out_after_first_byte,
    test_an_interim_100_continue_is_skipped,
    test_closing_an_answer_before_its_end_drops_its_connection,
    test_a_call_cancelled_while_waiting_for_its_answer_drops_its_connection,
    test_a_large_stream_read_slowly_arrives_whole_and_in_order,
]


@pytest.mark.parametrize("case", UNDER_UVLOOP, ids=lambda case: case.__name__.removeprefix("test_"))
def test_under_uvloop(case):
    uvloop = pytest.importorskip("uvloop")

    async def run() -> None:
        servers, client = Servers(), UpstreamClient()
        try:
            await case(servers, client)
        finally:
            await client.close()
            await servers.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
