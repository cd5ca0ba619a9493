"""The one JSON answer (`gateway/responses.py`), read off a real socket: orjson's bytes,
`Content-Type: application/json` with no charset, the status and the extra headers given."""

from __future__ import annotations

import asyncio
from types import MappingProxyType

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.responses import json_response

PAYLOAD = {"type": "message", "text": "héllo ✓", "n": 1, "none": None}


async def raw_get(server: TestServer, path: str) -> tuple[list[str], bytes]:
    """The answer's head lines and body, as the bytes came."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode("latin-1").split("\r\n"), body


async def test_a_json_answer_on_the_wire():
    async def plain(request: web.Request) -> web.Response:
        return json_response(PAYLOAD)

    async def with_headers(request: web.Request) -> web.Response:
        return json_response(PAYLOAD, status=503, headers=MappingProxyType({"cache-control": "no-store"}))

    app = web.Application()
    app.router.add_get("/plain", plain)
    app.router.add_get("/headers", with_headers)
    server = TestServer(app)
    await server.start_server()
    try:
        head, body = await raw_get(server, "/plain")
        assert head[0] == "HTTP/1.1 200 OK"
        assert "Content-Type: application/json" in head[1:]
        assert f"Content-Length: {len(body)}" in head[1:]
        assert body == orjson.dumps(PAYLOAD)
        head, body = await raw_get(server, "/headers")
        assert head[0] == "HTTP/1.1 503 Service Unavailable"
        assert {"Content-Type: application/json", "cache-control: no-store"} <= set(head[1:])
        assert body == orjson.dumps(PAYLOAD)
    finally:
        await server.close()
