"""A fast scripted fake OpenAI Chat Completions server, so the upstream is never the bottleneck.

    python -m bench.upstream --port 9199 [--chunks 20] [--chunk-delay-ms 0]

A raw `asyncio.Protocol` HTTP/1.1 server on uvloop: keep-alive, Content-Length request
bodies, and it reads only what it needs (the request line, Content-Length, two `x-fake-*`
headers and whether the body asks for a stream). Every reply is encoded once at start-up
(stream replies once per chunk count, on first use), so a request costs a few slices and
one or a few `write()`s.

`POST /v1/chat/completions` (any path, in fact) answers:
- a realistic non-streaming `chat.completion` with `usage`, with Content-Length;
- when the body has `"stream": true`: an SSE stream sent with `Transfer-Encoding: chunked`,
  one HTTP chunk per event: a role chunk, N content chunks of a few tokens each, a finish
  chunk, a usage chunk (when the body asks `stream_options.include_usage`) and
  `data: [DONE]`. N and the pause between chunks come from the headers `x-fake-chunks` /
  `x-fake-chunk-delay-ms` (as `gateway fake-upstream` reads them; the gateway's backend
  config sets them) or else from `--chunks` / `--chunk-delay-ms`.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys

import orjson

CREATED = 1735689600  # fixed: the replies are pre-encoded, and nothing checks the time
MODEL = "bench-model"
WORDS = "The quick brown fox jumps over the lazy dog while the gateway relays every token "
STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
USAGE_RE = re.compile(rb'"include_usage"\s*:\s*true')
HEADERS_END = b"\r\n\r\n"
MAX_HEADER_BYTES = 64 * 1024
PROMPT_TOKENS = 42


def _pieces(count: int) -> list[str]:
    """`count` content deltas of two or three words each, like a tokenizer's output."""
    words = WORDS.split()
    pieces, at = [], 0
    for i in range(count):
        size = 2 + i % 2
        pieces.append(" ".join(words[(at + k) % len(words)] for k in range(size)) + " ")
        at += size
    return pieces


def _response(status: bytes, content_type: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type + b"\r\n" + extra


def _usage(pieces: list[str]) -> dict:
    completion = sum(len(piece.split()) for piece in pieces)  # a word a token: near enough
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion, "total_tokens": PROMPT_TOKENS + completion}


def _completion_bytes() -> bytes:
    pieces = _pieces(20)
    text = "".join(pieces).strip()
    body = orjson.dumps(
        {
            "id": "chatcmpl-bench0000000000000000000000",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(pieces),
        }
    )
    return _response(b"200 OK", b"application/json", b"content-length: %d\r\n\r\n" % len(body)) + body


def _chunked(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (Transfer-Encoding: chunked) carrying `data`."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


def _sse(payload: dict) -> bytes:
    return _chunked(b"data: " + orjson.dumps(payload) + b"\n\n")


def stream_parts(chunks: int, include_usage: bool) -> list[bytes]:
    """The stream's writes, in order: headers + role chunk, content chunks, then the end
    (finish, usage, [DONE] and the terminating zero-length chunk) in one write."""
    base = {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
    }

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    head = _response(b"200 OK", b"text/event-stream", b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
    pieces = _pieces(chunks)
    parts = [head + chunk({"role": "assistant", "content": ""})]
    parts += [chunk({"content": piece}) for piece in pieces]
    end = chunk({}, "stop")
    if include_usage:
        end += _sse({**base, "choices": [], "usage": _usage(pieces)})
    parts.append(end + _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return parts


class Replies:
    """Every reply, encoded once; stream shapes are built on first use and kept."""

    def __init__(self, chunks: int, delay_ms: float) -> None:
        self.chunks = chunks
        self.delay_ms = delay_ms
        self.completion = _completion_bytes()
        self.not_found = _response(b"404 Not Found", b"text/plain", b"content-length: 0\r\n\r\n")
        self.bad_request = _response(
            b"400 Bad Request", b"text/plain", b"content-length: 0\r\nconnection: close\r\n\r\n"
        )
        self._streams: dict[tuple[int, bool], list[bytes]] = {}

    def stream(self, chunks: int, include_usage: bool) -> list[bytes]:
        key = (chunks, include_usage)
        parts = self._streams.get(key)
        if parts is None:
            parts = self._streams[key] = stream_parts(chunks, include_usage)
        return parts


def _header(lowered_head: bytes, name: bytes) -> bytes | None:
    """The value of header `name` (lowercase, with its colon) in the lowercased head, or None."""
    at = lowered_head.find(b"\r\n" + name)
    if at < 0:
        return None
    start = at + 2 + len(name)
    end = lowered_head.find(b"\r\n", start)
    return lowered_head[start : end if end >= 0 else None].strip()


class Connection(asyncio.Protocol):
    """One keep-alive connection: requests are answered in order, one at a time (a stream
    in progress holds back the next request, as HTTP/1.1 without pipelining needs)."""

    def __init__(self, replies: Replies) -> None:
        self.replies = replies
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.streaming: asyncio.TimerHandle | None = None  # the next paced write, if any
        # A body still arriving: its reads, kept apart and joined once it is all there (one
        # copy of the buffer per read made a 30 MB body cost gigabytes of copying).
        self.pieces: list[bytes] = []
        self.pieces_size = 0
        self.wanted = 0  # bytes the buffer needs for the request it holds; 0: unknown

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()
            self.streaming = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.wanted:
            self.pieces.append(data)
            self.pieces_size += len(data)
            if self.pieces_size < self.wanted:
                return
            self.buffer, self.pieces, self.pieces_size, self.wanted = b"".join(self.pieces), [], 0, 0
        else:
            self.buffer = self.buffer + data if self.buffer else data
        if self.streaming is None:
            self._answer_complete_requests()

    def _answer_complete_requests(self) -> None:
        while self.transport is not None and self.streaming is None:
            end = self.buffer.find(HEADERS_END)
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    self._refuse()
                return
            head = self.buffer[:end].lower()
            length = _header(head, b"content-length:")
            if length is None and b"\r\ntransfer-encoding:" in head:
                self._refuse()  # chunked request bodies are not needed by any client here
                return
            body_start = end + 4
            body_end = body_start + (int(length) if length else 0)
            if len(self.buffer) < body_end:
                self.wanted, self.pieces, self.pieces_size = body_end, [self.buffer], len(self.buffer)
                self.buffer = b""
                return
            body = self.buffer[body_start:body_end]
            self.buffer = self.buffer[body_end:]
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        if not head.startswith(b"post "):
            self.transport.write(self.replies.not_found)
        elif STREAM_RE.search(body) is None:
            self.transport.write(self.replies.completion)
        else:
            chunks = _header(head, b"x-fake-chunks:")
            delay = _header(head, b"x-fake-chunk-delay-ms:")
            parts = self.replies.stream(
                int(chunks) if chunks else self.replies.chunks, USAGE_RE.search(body) is not None
            )
            self._stream(parts, float(delay) / 1000 if delay else self.replies.delay_ms / 1000)

    def _stream(self, parts: list[bytes], delay: float) -> None:
        assert self.transport is not None
        if delay <= 0:
            for part in parts:  # one write per chunk, as a real server flushes each event
                self.transport.write(part)
            return
        self.transport.write(parts[0])
        self._schedule(parts, 1, delay)

    def _schedule(self, parts: list[bytes], index: int, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self.streaming = loop.call_later(delay, self._write_next, parts, index, delay)

    def _write_next(self, parts: list[bytes], index: int, delay: float) -> None:
        self.streaming = None
        if self.transport is None:
            return
        self.transport.write(parts[index])
        if index + 1 < len(parts):
            self._schedule(parts, index + 1, delay)
        elif self.buffer:  # a request that arrived during the stream
            self._answer_complete_requests()

    def _refuse(self) -> None:
        assert self.transport is not None
        self.transport.write(self.replies.bad_request)
        self.transport.close()


async def serve(host: str, port: int, replies: Replies) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(replies), host, port, backlog=4096, reuse_address=True)
    print(f"bench upstream listening on http://{host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream (default 20)")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="pause between stream chunks")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        print("uvloop is not installed: the stock asyncio loop is slower", file=sys.stderr)
        uvloop = None
    replies = Replies(args.chunks, args.chunk_delay_ms)
    runner = uvloop.run if uvloop is not None else asyncio.run
    try:
        runner(serve(args.host, args.port, replies))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
