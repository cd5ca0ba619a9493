"""Slow clients meet deadlines, and a process's open connections are capped
(gateway/connections.py).

The gateway is served here as `gateway serve` serves it: its listening socket through a
`GuardedSite` with the rules `server.listeners` derives from the config, with deadlines
short enough for a test. The clients are raw sockets that send their bytes as slowly as
they like; each test waits for the gateway to act within `PATIENCE`, far beyond the
deadlines, so a busy machine makes it slower, never wrong. Without the deadlines aiohttp
would hold such a client for its keep-alive timeout (an hour), and these tests would run
out of patience.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import anthropic
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway.app import build_app
from gateway.config import parse
from gateway.connections import GuardedSite
from gateway.observe.metrics import METRICS
from gateway.server import listeners
from tests.support.replies import chat_chunks
from tests.support.servers import gateway_config

HEADER_TIMEOUT = 0.5
BODY_TIMEOUT = 0.5
MAX_CONNECTIONS = 3
PATIENCE = 30.0  # seconds a test waits for the gateway to act


@dataclass
class Guarded:
    app: web.Application
    runner: web.AppRunner
    sites: list[GuardedSite]
    ports: list[int]  # the client listener's, then the admin listener's (if any)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    def sample(self, name: str, **labels: str) -> float:
        value = self.app[METRICS].registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def server_settings(extra: str = "") -> str:
    return (
        f"server: {{ping_interval: 0.2, header_timeout: {HEADER_TIMEOUT}, body_timeout: {BODY_TIMEOUT}, "
        f"max_connections: {MAX_CONNECTIONS}{extra}}}"
    )


async def serve_guarded(config_text: str, *, admin: bool = False) -> Guarded:
    """The app on 127.0.0.1, free ports: a client listener, and with `admin` an admin one."""
    config = parse(config_text, env={})
    app = build_app(config)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    client, admin_rules = listeners(config.server, admin=admin)
    sites, ports = [], []
    for rules in [client, admin_rules] if admin else [client]:
        sock = socket.create_server(("127.0.0.1", 0))
        sock.setblocking(False)
        site = GuardedSite(runner, sock, rules, app[METRICS].connections)
        await site.start()
        sites.append(site)
        ports.append(sock.getsockname()[1])
    return Guarded(app, runner, sites, ports)


@pytest.fixture
async def gateway(upstream) -> AsyncIterator[Guarded]:
    text = gateway_config(upstream.url).replace("server: {ping_interval: 0.2}", server_settings())
    guarded = await serve_guarded(text)
    yield guarded
    await guarded.runner.cleanup()


async def trickle(writer: asyncio.StreamWriter, head: bytes, then: bytes, every: float = 0.05) -> None:
    """`head` at once, then `then` a byte at a time, forever: until the gateway stops reading."""
    with contextlib.suppress(ConnectionError):
        writer.write(head)
        while True:
            for byte in then:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(every)


async def answer_then_end(reader: asyncio.StreamReader) -> bytes:
    """Everything the gateway sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), PATIENCE)


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, orjson.loads(body)


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """One keep-alive GET on an open connection; its status."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return int(head.split()[1])


async def test_a_client_sending_its_headers_slowly_is_answered_408_and_closed(gateway):
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports[0])
    sending = asyncio.create_task(trickle(writer, b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nx-slow: ", b"abcdefgh"))
    try:
        raw = await answer_then_end(reader)
    finally:
        sending.cancel()
        writer.close()
    status, headers, body = parse_answer(raw)
    assert status == 408 and headers["connection"] == "close" and headers["request-id"].startswith("req_")
    assert body["error"]["type"] == "invalid_request_error"
    assert "server.header_timeout" in body["error"]["message"]
    assert gateway.sample("gateway_client_timeouts_total", listener="client", phase="headers") == 1


async def test_a_connection_that_never_sends_a_byte_is_closed_without_an_answer(gateway):
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports[0])
    try:
        assert await answer_then_end(reader) == b""
    finally:
        writer.close()
    assert gateway.sample("gateway_client_timeouts_total", listener="client", phase="headers") == 1


async def test_a_client_sending_its_body_slowly_is_answered_408_and_closed(gateway):
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports[0])
    head = (
        b"POST /v1/messages HTTP/1.1\r\nHost: gateway\r\nx-api-key: client-key\r\n"
        b'content-type: application/json\r\ncontent-length: 100000\r\n\r\n{"model": "chat-model"'
    )
    sending = asyncio.create_task(trickle(writer, head, b"    "))
    try:
        raw = await answer_then_end(reader)
    finally:
        sending.cancel()
        writer.close()
    status, headers, body = parse_answer(raw)
    assert status == 408 and headers["connection"] == "close"
    assert body["error"]["type"] == "invalid_request_error"
    assert "server.body_timeout" in body["error"]["message"]
    assert gateway.sample("gateway_client_timeouts_total", listener="client", phase="body") == 1


async def test_a_request_aiohttp_cannot_parse_is_answered_in_the_messages_format(gateway, caplog):
    """A header field past aiohttp's 8190 bytes: a Messages error body, not aiohttp's plain
    text, and no traceback in the log (anybody on the network can send one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports[0])
    with caplog.at_level(logging.DEBUG):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nx-big: " + b"a" * 9000 + b"\r\n\r\n")
        try:
            raw = await answer_then_end(reader)
        finally:
            writer.close()
    status, headers, body = parse_answer(raw)
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("malformed HTTP request: ")
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING or record.exc_info]


@pytest.mark.parametrize(
    "line",
    [
        b"x-api-key: gk-live-Secret\x01KeyMaterial0123456789",  # a stray byte inside a key
        b"x-api-key: gk-live-SecretKeyMaterial0123456789" + b"a" * 9000,  # a key past the field limit
    ],
)
async def test_the_parser_s_refusal_never_echoes_or_logs_the_clients_bytes(gateway, caplog, line):
    """aiohttp's parser quotes the offending header line in its message; that line may be
    an API key. The answer and the log say what was wrong, never the bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports[0])
    with caplog.at_level(logging.DEBUG):
        writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: gateway\r\n" + line + b"\r\n\r\n")
        try:
            raw = await answer_then_end(reader)
        finally:
            writer.close()
    status, _, body = parse_answer(raw)
    assert status == 400 and body["error"]["message"].startswith("malformed HTTP request: ")
    assert b"SecretKeyMaterial" not in raw and b"Secret\\x01Key" not in raw
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "SecretKeyMaterial" not in logged and "Secret\\x01Key" not in logged


async def test_a_kept_alive_connection_may_idle_past_the_header_deadline(gateway):
    """The next request's head deadline starts at its first byte, not at the previous
    answer: idling between requests is the keep-alive timeout's business."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports[0])
    try:
        assert await get(reader, writer, "/healthz") == 200
        await asyncio.sleep(HEADER_TIMEOUT * 3)  # the idle time is the scenario, not a wait for an event
        assert await get(reader, writer, "/healthz") == 200
    finally:
        writer.close()
    assert gateway.sample("gateway_client_timeouts_total", listener="client", phase="headers") == 0


async def test_the_connection_past_the_cap_is_refused_503_while_the_others_are_open(gateway):
    held = [await asyncio.open_connection("127.0.0.1", gateway.ports[0]) for _ in range(MAX_CONNECTIONS)]
    try:
        for reader, writer in held:  # each answered: accepted and counted
            assert await get(reader, writer, "/healthz") == 200
        assert gateway.sample("gateway_open_connections", listener="client") == MAX_CONNECTIONS

        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports[0])
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        try:
            raw = await answer_then_end(reader)
        finally:
            writer.close()
        status, headers, body = parse_answer(raw)
        assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
        assert body["error"]["type"] == "overloaded_error" and "server.max_connections" in body["error"]["message"]
        assert gateway.sample("gateway_connections_refused_total", listener="client") == 1

        # One of them leaves: a new connection is served again (once the gateway saw it go).
        held.pop()[1].close()
        deadline = time.monotonic() + PATIENCE
        while True:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports[0])
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nconnection: close\r\n\r\n")
                raw = await answer_then_end(reader)
            finally:
                writer.close()
            if parse_answer(raw)[0] == 200:
                break
            assert time.monotonic() < deadline, "the cap never let a connection in again"
            await asyncio.sleep(0.05)
    finally:
        for _, writer in held:
            writer.close()


async def test_a_long_stream_is_not_cut_by_the_deadlines(gateway, upstream):
    """A stream that runs far longer than both deadlines together ends whole: they bound
    what the client sends, never the gateway's answer."""
    words = [f"word{i} " for i in range(8)]
    upstream.script({"sse": chat_chunks(*({"content": word} for word in words)), "chunk_delay": 0.25})
    started = time.monotonic()
    async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key="client-key", max_retries=0) as sdk:
        async with sdk.messages.stream(
            model="chat-model", max_tokens=64, messages=[{"role": "user", "content": "go on"}]
        ) as stream:
            message = await stream.get_final_message()
    assert time.monotonic() - started > HEADER_TIMEOUT + BODY_TIMEOUT  # the scenario did outlast them
    assert message.stop_reason == "end_turn"
    assert message.content[0].text == "".join(words)
    assert gateway.sample("gateway_client_timeouts_total", listener="client", phase="headers") == 0
    assert gateway.sample("gateway_client_timeouts_total", listener="client", phase="body") == 0


# ---------------------------------------------------------------------------- two listeners

ADMIN_TOKEN = "admin-token-for-the-listener-tests-0001"
METRICS_TOKEN = "metrics-token-for-the-listener-tests-01"


@pytest.fixture
async def split(upstream) -> AsyncIterator[Guarded]:
    text = gateway_config(upstream.url, f"admin: {{token: {ADMIN_TOKEN}}}\n").replace(
        "server: {ping_interval: 0.2}", server_settings(f", metrics_token: {METRICS_TOKEN}")
    )
    guarded = await serve_guarded(text, admin=True)
    yield guarded
    await guarded.runner.cleanup()


async def status_of(url: str, *, token: str | None = None, local: str = "127.0.0.1") -> tuple[int, CIMultiDict, dict]:
    """GET `url` from the address `local` (any of 127.0.0.0/8 reaches 127.0.0.1 on Linux)."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(local_addr=(local, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(url, headers=headers) as response:
            body = await response.read()
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                payload = {"text": body.decode()}
            return response.status, CIMultiDict(response.headers), payload


async def test_with_an_admin_listener_the_operator_paths_are_served_there_only(split):
    client, admin = (f"http://127.0.0.1:{port}" for port in split.ports)
    # Spelt as routing would still find them, too: dot segments, an escaped letter, a double slash.
    for path in (
        "/metrics",
        "/admin/teams",
        "/admin/openapi.json",
        "/admin",
        "/x/../admin/teams",
        "/%61dmin/teams",
        "//admin/teams",
        "/metrics/",
    ):
        status, _, body = await status_of(client + path, token=ADMIN_TOKEN)
        assert status == 404 and body["error"]["type"] == "not_found_error", path
    assert (await status_of(client + "/healthz"))[0] == 200
    async with anthropic.AsyncAnthropic(base_url=client, api_key="client-key", max_retries=0) as sdk:
        message = await sdk.messages.create(
            model="chat-model", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    assert message.type == "message"

    status, headers, body = await status_of(admin + "/metrics")
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert "server.metrics_token" in body["error"]["message"] and headers["www-authenticate"].startswith("Bearer")
    status, _, body = await status_of(admin + "/metrics", token=METRICS_TOKEN)
    assert status == 200 and "gateway_requests_total" in body["text"]
    assert (await status_of(admin + "/admin/teams", token=ADMIN_TOKEN))[0] == 200
    assert (await status_of(admin + "/admin/teams", token=METRICS_TOKEN))[0] == 401  # each token opens its own
    for path in ("/healthz", "/readyz"):
        assert (await status_of(admin + path))[0] == 200
    async with anthropic.AsyncAnthropic(base_url=admin, api_key="client-key", max_retries=0) as sdk:
        with pytest.raises(anthropic.NotFoundError):
            await sdk.messages.create(model="chat-model", max_tokens=16, messages=[{"role": "user", "content": "hi"}])


async def test_guessing_operator_tokens_is_throttled_per_source_address(split):
    """Ten wrong tokens from 127.0.0.2 within a minute: that address is answered 429 with
    retry-after, its token not even compared (the right one too), on /admin and /metrics
    alike; 127.0.0.1 is not held by it."""
    admin = f"http://127.0.0.1:{split.ports[1]}"
    for attempt in range(10):
        status, _, _ = await status_of(admin + "/admin/teams", token=f"guess-{attempt}", local="127.0.0.2")
        assert status == 401
    for url, token in ((admin + "/admin/teams", ADMIN_TOKEN), (admin + "/metrics", METRICS_TOKEN)):
        status, headers, body = await status_of(url, token=token, local="127.0.0.2")
        assert status == 429 and body["error"]["type"] == "rate_limit_error", url
        assert 1 <= int(headers["retry-after"]) <= 60
    assert (await status_of(admin + "/admin/teams", token=ADMIN_TOKEN))[0] == 200
