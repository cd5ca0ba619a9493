"""Messages SSE from a native backend, relayed as the upstream wrote it.

The bytes are not re-encoded, only cut at event boundaries, and watched for usage; the one
`message_start` is rewritten so its `model` is the name the client asked for. Like the
Chat relay (`messages_chat/relay.py`), it returns only whole events and records what broke
the stream in `failure` instead of raising; it holds at most `max_event` bytes of an event
not yet complete.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import GatewayError, UpstreamProtocolError
from gateway.protocols.sse import MAX_EVENT, SseDecoder, SseEvent, SseOverflow, encode, encode_json
from gateway.protocols.usage import clamped_usage
from gateway.translate.stream_failures import ended_early, tagged, upstream_error


def _last_boundary(buffer: bytes) -> int:
    """The end of the last complete SSE event in `buffer`, or -1."""
    ends = [buffer.rfind(sep) + len(sep) for sep in (b"\n\n", b"\r\n\r\n", b"\r\r") if sep in buffer]
    return max(ends) if ends else -1


def _raw_event(sse: SseEvent) -> bytes:
    """An event as SSE again, field for field (what the upstream sent, minus comments)."""
    head = b"event: " + sse.event.encode() + b"\n" if sse.event else b""
    lines = b"".join(b"data: " + line.encode() + b"\n" for line in sse.data.split("\n"))
    return head + lines + b"\n"


_WATCHED = frozenset({"message_start", "message_delta", "error", "message_stop"})


class NativeRelay:
    def __init__(self, model: str, *, max_event: int = MAX_EVENT) -> None:
        self._model = model
        self._decoder = SseDecoder(max_event)
        self._max_event = max_event
        # Bytes after the last event boundary, in pieces (joined once a boundary comes, so
        # an event that arrives in many reads costs its length, not its length squared),
        # their size, and their last three bytes, where a boundary that the next read ends
        # may begin.
        self._held: list[bytes] = []
        self._held_size = 0
        self._tail = b""
        self._started = False
        self.finished = False  # message_stop or error relayed
        self.done = False  # Messages streams have no `[DONE]`; message_stop is the end
        self.has_content = False
        self.failure: GatewayError | None = None
        self.usage: dict[str, Any] = {}
        self.stop_reason: str | None = None

    @property
    def usage_reported(self) -> bool:
        return bool(self.usage)

    def start(self) -> bytes:
        return b""  # the upstream sends its own message_start

    def feed(self, data: bytes) -> bytes:
        if self.finished:
            return b""
        tail = self._tail
        cut = _last_boundary(tail + data if tail else data)
        if cut < 0:
            self._held.append(data)
            self._held_size += len(data)
            self._tail = (tail + data)[-3:]
            return self._too_long() if self._held_size > self._max_event else b""
        cut -= len(tail)  # in `data`: a boundary the held bytes did not complete ends in it
        complete = b"".join((*self._held, data[:cut])) if self._held else data[:cut]
        rest = data[cut:]
        self._held = [rest] if rest else []
        self._held_size = len(rest)
        self._tail = rest[-3:]
        try:
            out = self._relay(complete, self._decoder.feed(complete))
        except SseOverflow as overflow:
            return self._relay(None, overflow.events) + self._failed(overflow)
        if self._held_size > self._max_event:
            return out + self._too_long()
        return out

    def _too_long(self) -> bytes:
        """The event under way is past `max_event` before its end: the stream fails, and
        what is held of it is let go."""
        self._held, self._held_size, self._tail = [], 0, b""
        return self._failed(SseOverflow(self._max_event, []))

    def _relay(self, complete: bytes | None, events: list[SseEvent]) -> bytes:
        """`complete`'s bytes as they came, when nothing in them needs changing; else its
        events encoded again (always, for `complete` None): the one message_start (its
        model rewritten), nothing after the stream's end, and before a failure only what
        preceded it."""
        rewrite = False
        for i, sse in enumerate(events):
            kind = sse.event
            if kind == "content_block_delta":
                self.has_content = True
            elif kind in _WATCHED:
                try:
                    rewrite |= self._watch(kind, sse.data)
                except GatewayError as error:
                    return self._encode(events[:i], rewrite) + self._failed(error)
                if self.finished:
                    if kind == "error":  # the upstream's own error event, scrubbed
                        return self._encode(events[:i], rewrite) + self._error_event()
                    if rewrite or complete is None or i + 1 < len(events):
                        return self._encode(events[: i + 1], rewrite)
                    return complete
        if rewrite or complete is None:
            return self._encode(events, rewrite)
        return complete

    def _encode(self, events: list[SseEvent], rewrite: bool) -> bytes:
        return b"".join(
            encode("message_start", self._with_model(sse.data))
            if rewrite and sse.event == "message_start"
            else _raw_event(sse)
            for sse in events
        )

    def _watch(self, kind: str, data: str) -> bool:
        if kind == "message_stop":
            self.finished = True
            return False
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(f"the model's backend sent a {kind} event that is not JSON") from None
        if kind == "error":
            self.failure = upstream_error(payload, data)
            self.finished = True
            return False
        if not isinstance(payload, dict):
            raise UpstreamProtocolError(f"the model's backend sent a {kind} event that is not an object")
        if kind == "message_start":
            message = payload.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            self._count(usage)
            if self._started:
                return False
            self._started = True
            return True
        self._count(payload.get("usage"))
        delta = payload.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
            self.stop_reason = delta["stop_reason"]
        return False

    def _count(self, usage: object) -> None:
        if isinstance(usage, dict):
            usage = clamped_usage(usage)  # the request is settled with these (`protocols/usage.py`)
            self.usage.update({k: v for k, v in usage.items() if isinstance(v, int)})
            # Web searches are priced per search (`admission.web_searches`); cumulative, as the counts.
            if isinstance(usage.get("server_tool_use"), dict):
                self.usage["server_tool_use"] = usage["server_tool_use"]

    def _with_model(self, data: str) -> dict[str, Any]:
        payload: dict[str, Any] = orjson.loads(data)
        if isinstance(payload.get("message"), dict):
            payload["message"]["model"] = self._model
        return payload

    def _error_event(self) -> bytes:
        error = self.failure
        assert error is not None
        return encode_json({"type": "error", "error": {"type": error.error_type, "message": error.message}})

    def end(self) -> bytes:
        """The upstream closed the stream. What it sent after its last blank line still
        counts where every event of it is whole (the official SDKs read a stream that
        ends `data: {"type":"message_stop"}` without its blank line as complete);
        anything cut short is an early end."""
        if self.finished:
            return b""
        rest = b"".join(self._held)
        self._held, self._held_size, self._tail = [], 0, b""
        # Within the cap (`feed` saw to it), so no line or event here can be past it.
        events = self._decoder.feed(rest) + self._decoder.flush() if rest else []
        whole = []
        for sse in events:
            try:
                orjson.loads(sse.data)
            except orjson.JSONDecodeError:
                break
            whole.append(sse)
        out = self._relay(None, whole)
        if self.finished:
            return out
        return out + self._failed(ended_early())

    def fail(self, error: GatewayError) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        return encode_json(error.body(None))

    def _failed(self, error: GatewayError) -> bytes:
        if self.failure is None and not self.finished:
            self.failure = tagged(error)
        return self.fail(error)
