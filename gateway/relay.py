"""What a stream's bytes become on their way to the client, one relay per protocol pair.

A relay is pure (no sockets, no clock): the pump in `streaming.py` hands it each upstream
read and writes what it returns. Both relays return only whole SSE events, so the pump
may slip a `ping` between two writes and a failure never leaves half an event behind.

A relay does not raise for what the upstream sent. When a read holds good events and then
a failure (a chunk that is not JSON, an in-band error, a broken event), `feed` returns the
good events' bytes, in order, then the closing `error` event, and records the cause in
`failure`: the client keeps every delta the upstream made before it failed, whether the
bad bytes came in a read of their own or with the good ones. The pump reads `failure`
to judge the deployment (a stream that failed midway is an upstream failure).

- `ChatRelay`: Chat Completions SSE → decoder → `ChatStreamTranslator` → Messages SSE.
- `NativeRelay`: Messages SSE relayed as the upstream wrote it (bytes not re-encoded, only
  cut at event boundaries), watched for usage; the one `message_start` is rewritten so
  its `model` is the name the client asked for.

Each holds at most `max_event` bytes of an event not yet complete (the backend's
`max_event_bytes`): a line or an event past it fails the stream as `stream_protocol`.
"""

from __future__ import annotations

import re

import orjson

from gateway.errors import MESSAGES_ERROR_TYPES, GatewayError, Overloaded, UpstreamProtocolError
from gateway.protocols.sse import DONE, MAX_EVENT, SseDecoder, SseEvent, SseOverflow, encode, encode_json
from gateway.protocols.usage import clamped_usage
from gateway.translate.chat_errors import upstream_message
from gateway.translate.chat_request import ChatCall
from gateway.translate.chat_stream import ChatStreamTranslator

_ENDED_EARLY = "the model's backend ended the stream early"


class ChatRelay:
    def __init__(self, call: ChatCall, *, input_tokens: int = 0, max_event: int = MAX_EVENT) -> None:
        self._decoder = SseDecoder(max_event)
        self._translator = ChatStreamTranslator(call, input_tokens=input_tokens)
        self.done = False  # the upstream said `[DONE]`
        self.has_content = False
        self.failure: GatewayError | None = None  # what ended the stream, when the upstream failed
        # The bytes around the text in this stream's text-only chunks (`_learn`).
        self._shape: tuple[bytes, bytes] | None = None

    @property
    def finished(self) -> bool:
        return self._translator.finished

    @property
    def usage(self) -> dict:
        return self._translator.usage

    @property
    def usage_reported(self) -> bool:
        return self._translator.usage_reported

    def start(self) -> bytes:
        return self._encode(self._translator.start())

    def feed(self, data: bytes) -> bytes:
        payloads = self._decoder.data_only(data)
        if payloads is not None:
            return self._translate(payloads)
        try:
            events = self._decoder.feed(data)
        except SseOverflow as overflow:
            return self._translate([sse.data for sse in overflow.events], overflow)
        return self._translate([sse.data for sse in events])

    def _translate(self, payloads: list[bytes] | list[str], failure: GatewayError | None = None) -> bytes:
        """Each event's data → Messages SSE, then `failure` if the read ended in one. A
        chunk that only continues the open text block (most of them) is written from a
        template, byte for byte what encoding its event would give, without building the
        event; one shaped like the last such chunk (`_shape`) is not even parsed. State
        the pump reads (`has_content`) changes only once the whole read translated."""
        translator = self._translator
        if translator.finished:  # `feed` never finishes it: once per read is enough
            if DONE_BYTES in payloads or DONE in payloads:
                self.done = True
            return b""
        out: list[bytes] = []
        try:
            content = self._each(payloads, out)
            if failure is not None:
                raise failure
        except GatewayError as error:
            # What came before the failure is the client's: it leaves first, then the error.
            content = self.has_content or _has_delta_bytes(out)
            out.append(self._failed(error))
        if content:
            self.has_content = True
        return b"".join(out)

    def _each(self, payloads: list[bytes] | list[str], out: list[bytes]) -> bool:
        """`_translate`'s loop: each payload's events onto `out`; whether any was a delta."""
        translator = self._translator
        content = False
        continuation, loads, plain = translator.text_continuation, orjson.loads, _PLAIN_STRING.fullmatch
        # Only `feed` changes whether a text block is open, and which: read again after it.
        text_open, index = translator.text_open, translator.index
        for data in payloads:
            shaped = False
            if text_open and self._shape is not None and type(data) is bytes:
                prefix, suffix = self._shape
                if data.startswith(prefix) and data.endswith(suffix):
                    shaped = True
                    start, end = len(prefix), len(data) - len(suffix)
                    if plain(data, start, end):
                        translator.continue_text(end - start - 2)  # ASCII: bytes are characters
                        out.append(_TEXT_DELTA % (index, data[start:end]))
                        content = True
                        continue
            if data == DONE_BYTES or data == DONE:
                self.done = True
                continue
            try:
                chunk = loads(data)
            except orjson.JSONDecodeError:
                raise UpstreamProtocolError("the model's backend sent a stream chunk that is not JSON") from None
            text = continuation(chunk)
            if text is not None:
                literal = orjson.dumps(text)
                out.append(_TEXT_DELTA % (index, literal))
                content = True
                if not shaped and type(data) is bytes:
                    self._learn(data, literal)
                continue
            events = translator.feed(chunk)
            text_open, index = translator.text_open, translator.index
            if events:
                content = content or _has_delta(events)
                out.append(b"".join(map(encode_json, events)))
        return content

    def _learn(self, data: bytes, literal: bytes) -> None:
        """Remember the bytes around the text of a chunk that only continued the text block.

        Servers send every such chunk of a stream alike (id, model, created, the same
        keys in the same order) but for the text. A later chunk with the same bytes
        before and after, and between them a string literal that needs no escape, is
        then the same chunk with another text: its event needs no parsing. Learned only
        where the one `"content":` of the chunk is followed by the text encoded as this
        gateway encodes it, so the bytes between are that text's and nothing else."""
        if data.count(b'"content":') != 1:
            return
        at = data.find(b'"content":' + literal)
        if at < 0:
            return
        start = at + len(b'"content":')
        self._shape = (data[:start], data[start + len(literal) :])

    def end(self) -> bytes:
        """The upstream closed the stream. A last event whose lines are whole counts even
        without the blank line that should end it (`data: [DONE]` and EOF), as the
        official SDKs read it."""
        try:
            tail = self._translate([sse.data for sse in self._decoder.flush()])
        except SseOverflow as overflow:
            tail = self._translate([sse.data for sse in overflow.events], overflow)
        if self._translator.finished:
            return tail
        if self.done or self._translator.finish_reason is not None:
            try:
                return tail + self._encode(self._translator.finish())
            except GatewayError as error:  # `finish` decides before it changes anything
                return tail + self._failed(error)
        return tail + self._failed(_ended_early())

    def fail(self, error: GatewayError) -> bytes:
        """The closing `error` event for a failure the pump met (a reset, a stall, a
        client gone); the relay's own failures are recorded in `failure` by `_failed`."""
        return self._encode(self._translator.fail(error))

    def _failed(self, error: GatewayError) -> bytes:
        if self.failure is None and not self._translator.finished:
            self.failure = _tagged(error)
        return self.fail(error)

    def _encode(self, events: list[dict]) -> bytes:
        if not events:
            return b""
        if not self.has_content:
            self.has_content = _has_delta(events)
        return b"".join(map(encode_json, events))


def _has_delta(events: list[dict]) -> bool:
    return any(e["type"] == "content_block_delta" for e in events)


def _has_delta_bytes(encoded: list[bytes]) -> bool:
    return any(b"event: content_block_delta\n" in part for part in encoded)


DONE_BYTES = DONE.encode()
# A non-empty JSON string literal that no encoder escapes anything in: printable ASCII
# without `"` or `\`. Its bytes are then what `orjson.dumps` gives for its text.
_PLAIN_STRING = re.compile(rb'"[ !#-\[\]-~]+"')
_TEXT_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"text_delta","text":%b}}\n\n'
)


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
        self.usage: dict = {}
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
            self.failure = _upstream_error(payload, data)
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

    def _with_model(self, data: str) -> dict:
        payload = orjson.loads(data)
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
        return out + self._failed(_ended_early())

    def fail(self, error: GatewayError) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        return encode_json(error.body(None))

    def _failed(self, error: GatewayError) -> bytes:
        if self.failure is None and not self.finished:
            self.failure = _tagged(error)
        return self.fail(error)


def _tagged(error: GatewayError) -> GatewayError:
    """`error` with the kind of stream failure it is (`Exchange.stream_failure`)."""
    if error.upstream_failure is None:
        error.upstream_failure = "stream_protocol" if isinstance(error, UpstreamProtocolError) else "stream_error"
    return error


def _ended_early() -> GatewayError:
    error = GatewayError(_ENDED_EARLY)
    error.upstream_failure = "stream_reset"
    return error


def _upstream_error(payload: object, data: str) -> GatewayError:
    """An upstream `error` event as the gateway error it stands for: its Messages type kept
    when it is one (overloaded stays overloaded), its message scrubbed of secrets."""
    error = payload.get("error") if isinstance(payload, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    text = upstream_message(data.encode()) or "the model's backend failed mid-stream"
    failure = Overloaded(text) if kind == "overloaded_error" else GatewayError(text)
    if isinstance(kind, str) and kind in MESSAGES_ERROR_TYPES:
        failure.error_type = kind
    failure.upstream_failure = "stream_error"
    return failure
