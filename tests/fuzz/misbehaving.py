"""A server that gets wrong, on purpose, each thing the fuzz harness checks:
`python -m tests.fuzz.misbehaving PORT`. A request's `x-misbehave` header says how to
answer `POST /v1/messages`; `/healthz` answers as the gateway's does. The harness's own
tests (test_harness.py) send to it to see each check catch what it is for."""

from __future__ import annotations

import asyncio
import sys
import time

import orjson
from aiohttp import web

MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "m",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 1, "output_tokens": 1},
}
START = {"type": "message_start", "message": {**MESSAGE, "content": [], "stop_reason": None}}
EVENTS = [
    START,
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 1},
    },
    {"type": "message_stop"},
]


def sse(event: dict) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def stream(request: web.Request, events: list[dict], *, forever: bool = False) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    for event in events:
        await response.write(sse(event))
    while forever:  # pings, as a live stream sends, and never an end
        await response.write(sse({"type": "ping"}))
        await asyncio.sleep(0.1)
    return response


async def messages(request: web.Request) -> web.StreamResponse:
    await request.read()
    how = request.headers.get("x-misbehave", "ok")
    error = {"type": "error", "error": {"type": "api_error", "message": "x"}}
    if how == "ok":
        return web.json_response(MESSAGE)
    if how == "ok-stream":
        return await stream(request, EVENTS)
    if how == "500":
        return web.json_response(error, status=500)
    if how == "plain":
        return web.Response(status=400, text="Bad Request")
    if how == "bad-error":
        return web.json_response({"error": "bad"}, status=400)
    if how == "not-a-message":
        return web.json_response({"id": "x"})
    if how == "broken-stream":  # a delta after its block's stop, and no message_stop
        return await stream(request, [*EVENTS[:4], EVENTS[2]])
    if how == "hang-stream":
        return await stream(request, EVENTS[:3], forever=True)
    if how == "silent":
        await asyncio.sleep(3600)
    if how == "log-key":
        key = request.headers.get("x-api-key", "")
        print(f"refused key {key}", file=sys.stderr, flush=True)
        return web.json_response(error | {"error": {"type": "authentication_error", "message": "no"}}, status=401)
    if how == "block":  # the event loop computing for 300 ms of CPU: nothing else is answered meanwhile
        until = time.process_time() + 0.3
        while time.process_time() < until:
            pass
        return web.json_response(MESSAGE)
    raise web.HTTPBadRequest(text=f"unknown x-misbehave: {how}")


def main(port: int) -> None:
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/messages", messages)
    # (no grace at shutdown for the requests left hanging on purpose)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, shutdown_timeout=0.1, print=_listening)


def _listening(_: str) -> None:
    print("misbehaving listening", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
