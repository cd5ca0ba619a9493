"""A small scripted upstream that speaks both Chat Completions and Messages, over real HTTP.

The quick start routes its `demo` models here (no provider account, no network; `gateway
demo` serves it in the gateway's own process, gateway/cli/demo.py), and the tests drive
it: each test queues the replies it wants (`script`), the server answers the next request
with the next reply, and records every request it received (`requests`).
With nothing queued it answers like a polite model that repeats the last user message.

Endpoints: `POST /v1/chat/completions`, `POST /v1/messages`, `POST /v1/messages/count_tokens`,
`POST /tokenize` (vLLM's), and for scripting from another process `POST /_script`
(a JSON list of replies), `GET /_requests`, `POST /_reset`.

A reply is a JSON-able dict:
    {"status": 200, "json": {...}}                      one JSON body
    {"status": 200, "sse": [item, ...]}                 a stream; each item is a dict (written as
                                                        `data: <json>`), {"event": name, "data": {...}}
                                                        (written with its `event:` line), or a str
                                                        written as raw text
    optional: "headers": {...}, "delay": s (before answering), "chunk_delay": s (between items),
              "stall_after": n (send n items, then hang), "reset_after": n (send n items, then drop
              the connection), "body": "raw text" (instead of json), "one_write": true (the whole
              stream in one write, so the gateway reads it at once)
    hostile:  "repeat": n (the last `sse` item, or the body, written n more times; "forever": until
              the client leaves, the answer then never ends), "gzip": true (the answer gzip-compressed
              as it is written, each piece flushed: with "repeat", a small gzip bomb)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger(__name__)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeUpstream:
    url: str = ""  # set by whoever serves it
    replies: list[dict] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    # Streams whose client went away before the stream ended (the gateway cancelled upstream).
    disconnects: int = 0
    completed_streams: int = 0
    record: bool = True  # benchmarks turn this off so memory stays flat
    # Requests being answered right now, and the most there ever were at once.
    in_flight: int = 0
    max_in_flight: int = 0

    def script(self, *replies: dict) -> None:
        self.replies.extend(replies)

    def reset(self) -> None:
        self.replies.clear()
        self.requests.clear()
        self.disconnects = 0
        self.completed_streams = 0
        self.max_in_flight = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/_script", self._script)
        app.router.add_get("/_requests", self._requests)
        app.router.add_post("/_reset", self._reset)
        return app

    # ------------------------------------------------------------------ control endpoints

    async def _script(self, request: web.Request) -> web.Response:
        replies = await request.json()
        self.script(*(replies if isinstance(replies, list) else [replies]))
        return web.json_response({"queued": len(self.replies)})

    async def _requests(self, request: web.Request) -> web.Response:
        return web.json_response(
            [{"method": r.method, "path": r.path, "headers": r.headers, "body": r.body} for r in self.requests]
        )

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    # ------------------------------------------------------------------ model endpoints

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        if self.record:
            self.requests.append(Recorded(request.method, request.path, dict(request.headers), body))
        return body

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        reply = self.replies.pop(0) if self.replies else _default_chat(body, _load_shape(request))
        return await self._answer(request, reply)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        reply = self.replies.pop(0) if self.replies else _default_messages(body)
        return await self._answer(request, reply)

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if self.replies:
            return await self._answer(request, self.replies.pop(0))
        return web.json_response({"input_tokens": len(orjson.dumps(body)) // 4})

    async def _tokenize(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if self.replies:
            return await self._answer(request, self.replies.pop(0))
        count = len(orjson.dumps(body.get("messages", []))) // 4
        return web.json_response({"count": count, "max_model_len": 32768, "tokens": []})

    async def _answer(self, request: web.Request, reply: dict) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._reply(request, reply)
        finally:
            self.in_flight -= 1

    async def _reply(self, request: web.Request, reply: dict) -> web.StreamResponse:
        if reply.get("delay"):
            await asyncio.sleep(reply["delay"])
        status = reply.get("status", 200)
        headers = reply.get("headers", {})
        if "sse" not in reply and not reply.get("repeat") and not reply.get("gzip"):
            if "body" in reply:
                return web.Response(status=status, text=reply["body"], headers=headers)
            return web.Response(
                status=status,
                body=orjson.dumps(reply.get("json", {})),
                content_type="application/json",
                headers=headers,
            )
        if "sse" in reply:
            content_type, items = "text/event-stream", [_encode_item(item) for item in reply["sse"]]
        elif "body" in reply:
            content_type, items = "text/plain; charset=utf-8", [reply["body"].encode()]
        else:
            content_type, items = "application/json", [orjson.dumps(reply.get("json", {}))]
        response = web.StreamResponse(status=status, headers={"content-type": content_type, **headers})
        body = _Body(response, gzip=bool(reply.get("gzip")))
        await response.prepare(request)
        if reply.get("one_write"):
            await body.write(b"".join(items))
            await body.end()
            self.completed_streams += 1
            return response
        try:
            for n, item in enumerate(items):
                if reply.get("reset_after") == n:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                if reply.get("stall_after") == n:
                    await asyncio.sleep(3600)
                if n and reply.get("chunk_delay"):
                    await asyncio.sleep(reply["chunk_delay"])
                await body.write(item)
            for item in _repeated(items[-1], reply.get("repeat")):
                await body.write(item)
                await asyncio.sleep(0)  # the gateway may share this loop: let it read
            await body.end()
            self.completed_streams += 1
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnects += 1
            raise
        return response


class _Body:
    """An answer written piece by piece; gzip-compressed if asked, each piece flushed so
    it leaves at once (a gzip bomb, fed to the gateway as it inflates)."""

    def __init__(self, response: web.StreamResponse, *, gzip: bool) -> None:
        self._response = response
        self._zlib = zlib.compressobj(wbits=31) if gzip else None
        if gzip:
            response.headers["content-encoding"] = "gzip"

    async def write(self, data: bytes) -> None:
        if self._zlib is not None:
            data = self._zlib.compress(data) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
        await self._response.write(data)

    async def end(self) -> None:
        if self._zlib is not None:
            await self._response.write(self._zlib.flush())
        await self._response.write_eof()


def _repeated(item: bytes, repeat: int | str | None) -> Iterable[bytes]:
    """`item` again `repeat` times, or without end for "forever"."""
    if repeat == "forever":
        return itertools.repeat(item)
    return itertools.repeat(item, int(repeat or 0))


def _encode_item(item: Any) -> bytes:
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, dict) and "event" in item and "data" in item:
        return b"event: " + item["event"].encode() + b"\ndata: " + orjson.dumps(item["data"]) + b"\n\n"
    return b"data: " + orjson.dumps(item) + b"\n\n"


# ---------------------------------------------------------------------- default answers


def _last_user_text(messages: Any) -> str:
    for message in reversed(messages or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"]
            if texts:
                return texts[-1]
    return ""


def _demo_text(body: Any) -> str:
    said = _last_user_text(body.get("messages") if isinstance(body, dict) else None)
    return f"Hello from the demo upstream. You said: {said}" if said else "Hello from the demo upstream."


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def _load_shape(request: web.Request) -> tuple[int, float] | None:
    """Benchmarks ask for a stream of N chunks, D ms apart, with `x-fake-chunks: N` and
    `x-fake-chunk-delay-ms: D` (set as backend `headers:` in the gateway's config)."""
    chunks = request.headers.get("x-fake-chunks")
    if not chunks:
        return None
    return int(chunks), float(request.headers.get("x-fake-chunk-delay-ms", "0")) / 1000


def _default_chat(body: Any, shape: tuple[int, float] | None = None) -> dict:
    text = _demo_text(body) if shape is None else "tok " * shape[0]
    model = body.get("model", "demo") if isinstance(body, dict) else "demo"
    usage = {"prompt_tokens": len(orjson.dumps(body)) // 4, "completion_tokens": len(_words(text)), "total_tokens": 0}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    created = int(time.time())
    if isinstance(body, dict) and body.get("stream"):
        base = {"id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": created, "model": model}
        items: list[Any] = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
        pieces = ["tok "] * shape[0] if shape else _words(text)
        items += [{**base, "choices": [{"index": 0, "delta": {"content": w}}]} for w in pieces]
        items.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            items.append({**base, "choices": [], "usage": usage})
        items.append("data: [DONE]\n\n")
        return {"sse": items, "chunk_delay": shape[1] if shape else 0.0}
    return {
        "json": {
            "id": "chatcmpl-demo",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        }
    }


def _default_messages(body: Any) -> dict:
    text = _demo_text(body)
    model = body.get("model", "demo") if isinstance(body, dict) else "demo"
    usage = {"input_tokens": len(orjson.dumps(body)) // 4, "output_tokens": len(_words(text))}
    message = {
        "id": "msg_demo",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    if not (isinstance(body, dict) and body.get("stream")):
        return {"json": message}
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    items: list[Any] = [
        {"event": "message_start", "data": {"type": "message_start", "message": start}},
        {
            "event": "content_block_start",
            "data": {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        },
        {"event": "ping", "data": {"type": "ping"}},
    ]
    items += [
        {
            "event": "content_block_delta",
            "data": {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}},
        }
        for w in _words(text)
    ]
    items += [
        {"event": "content_block_stop", "data": {"type": "content_block_stop", "index": 0}},
        {
            "event": "message_delta",
            "data": {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        },
        {"event": "message_stop", "data": {"type": "message_stop"}},
    ]
    return {"sse": items}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gateway fake-upstream", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9099)
    parser.add_argument("--no-record", action="store_true", help="do not keep received requests (for load tests)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    web.run_app(
        FakeUpstream(record=not args.no_record).app(),
        host=args.host,
        port=args.port,
        handler_cancellation=True,
        access_log=None,
        print=lambda _: log.info("fake upstream listening on http://%s:%d", args.host, args.port),
    )


if __name__ == "__main__":
    main()
