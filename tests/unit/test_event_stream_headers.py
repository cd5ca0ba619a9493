"""A stream's headers leave with its first event, in one write (`streaming.EventStreamResponse`).

aiohttp offers no public way to hold a `StreamResponse`'s headers for its first body bytes;
the gateway sets aiohttp's private class switch in one place. These tests fail when aiohttp
stops honouring it: over a real socket, nothing is written when the stream is prepared, and
the headers go out in the same write as the first event. A plain `StreamResponse`, served
the same way, shows what the measurement sees when the headers leave alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from gateway.streaming import SSE_HEADERS, EventStreamResponse

FIRST = b'event: message_start\ndata: {"type":"message_start"}\n\n'
LAST = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


@dataclass
class Written:
    """Bytes the server had handed its transport: once prepared, once the first event was written."""

    at_prepare: list[int] = field(default_factory=list)
    at_first_write: list[int] = field(default_factory=list)


def stream_app(response_class: type[web.StreamResponse], written: Written) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = response_class(status=200, headers=SSE_HEADERS)
        await response.prepare(request)
        written.at_prepare.append(request.writer.output_size)
        await response.write(FIRST)
        written.at_first_write.append(request.writer.output_size)
        await response.write_eof(LAST)
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    return app


@pytest.fixture
async def served() -> AsyncIterator[object]:
    runners: list[web.AppRunner] = []

    async def serve(app: web.Application) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner.addresses[0][1]

    yield serve
    for runner in runners:
        await runner.cleanup()


async def fetch_raw(port: int) -> bytes:
    """One HTTP/1.1 GET over a plain socket: every byte the server sent, as sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_aiohttp_still_has_the_switch() -> None:
    # Streams send their headers at once by default; the gateway's class turns that off.
    assert web.StreamResponse._send_headers_immediately is True
    assert EventStreamResponse._send_headers_immediately is False


async def test_the_headers_leave_with_the_first_event_in_one_write(served) -> None:
    written = Written()
    raw = await fetch_raw(await served(stream_app(EventStreamResponse, written)))
    head, _, body = raw.partition(b"\r\n\r\n")
    head += b"\r\n\r\n"
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"x-accel-buffering: no" in head.lower()
    assert body == chunk(FIRST) + chunk(LAST) + b"0\r\n\r\n"
    # Prepared: nothing on the wire yet. First write: the headers and the event, together.
    assert written.at_prepare == [0]
    assert written.at_first_write == [len(head) + len(chunk(FIRST))]


async def test_a_plain_stream_response_sends_its_headers_alone(served) -> None:
    """The control: what the measurement above sees when aiohttp writes the headers at prepare."""
    written = Written()
    raw = await fetch_raw(await served(stream_app(web.StreamResponse, written)))
    head = raw.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert written.at_prepare == [len(head)]
    assert written.at_first_write == [len(head) + len(chunk(FIRST))]
