"""What a stream's bytes become on their way to the client, one relay per protocol pair.

A relay is pure (no sockets, no clock): the pump in `streaming.py` hands it each upstream
read and writes what it returns. Both relays return only whole SSE events, so the pump
may slip a `ping` between two writes and a failure never leaves half an event behind.

- `ChatRelay`: Chat Completions SSE → decoder → `ChatStreamTranslator` → Messages SSE.
- `NativeRelay`: Messages SSE relayed as the upstream wrote it (bytes not re-encoded, only
  cut at event boundaries), watched for usage; the one `message_start` is rewritten so
  its `model` is the name the client asked for.
"""

from __future__ import annotations

import re

import orjson

from gateway.errors import GatewayError, UpstreamProtocolError
from gateway.protocols.sse import DONE, SseDecoder, encode, encode_json
from gateway.translate.chat_request import ChatCall
from gateway.translate.chat_stream import ChatStreamTranslator

_ENDED_EARLY = "the model's backend ended the stream early"


class ChatRelay:
    def __init__(self, call: ChatCall, *, input_tokens: int = 0) -> None:
        self._decoder = SseDecoder()
        self._translator = ChatStreamTranslator(call, input_tokens=input_tokens)
        self.done = False  # the upstream said `[DONE]`
        self.has_content = False
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
        if payloads is None:
            payloads = [sse.data for sse in self._decoder.feed(data)]
        return self._translate(payloads)

    def _translate(self, payloads: list[bytes] | list[str]) -> bytes:
        """Each event's data → Messages SSE. A chunk that only continues the open text
        block (most of them) is written from a template, byte for byte what encoding its
        event would give, without building the event; one shaped like the last such
        chunk (`_shape`) is not even parsed. State the pump reads (`has_content`)
        changes only once the whole read translated."""
        translator = self._translator
        if translator.finished:  # `feed` never finishes it: once per read is enough
            if DONE_BYTES in payloads or DONE in payloads:
                self.done = True
            return b""
        out: list[bytes] = []
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
        if content:
            self.has_content = True
        return b"".join(out)

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
        """The upstream closed the stream."""
        tail = self._translate([sse.data for sse in self._decoder.flush()])  # a last event the upstream did not terminate
        if self._translator.finished:
            return tail
        if self.done or self._translator.finish_reason is not None:
            return tail + self._encode(self._translator.finish())
        return tail + self.fail(GatewayError(_ENDED_EARLY))

    def fail(self, error: GatewayError) -> bytes:
        return self._encode(self._translator.fail(error))

    def _encode(self, events: list[dict]) -> bytes:
        if not events:
            return b""
        if not self.has_content:
            self.has_content = _has_delta(events)
        return b"".join(map(encode_json, events))


def _has_delta(events: list[dict]) -> bool:
    return any(e["type"] == "content_block_delta" for e in events)


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


class NativeRelay:
    def __init__(self, model: str) -> None:
        self._model = model
        self._decoder = SseDecoder()
        self._pending = b""
        self._started = False
        self.finished = False  # message_stop or error relayed
        self.done = False  # Messages streams have no `[DONE]`; message_stop is the end
        self.has_content = False
        self.usage: dict = {}
        self.stop_reason: str | None = None

    @property
    def usage_reported(self) -> bool:
        return bool(self.usage)

    def start(self) -> bytes:
        return b""  # the upstream sends its own message_start

    def feed(self, data: bytes) -> bytes:
        buffer = self._pending + data if self._pending else data
        cut = _last_boundary(buffer)
        if cut < 0:
            self._pending = buffer
            return b""
        complete, self._pending = buffer[:cut], buffer[cut:]
        events = self._decoder.feed(complete)
        rewrite = False
        for sse in events:
            kind = sse.event
            if kind == "content_block_delta":
                self.has_content = True
            elif kind in ("message_start", "message_delta", "error", "message_stop"):
                rewrite |= self._watch(kind, sse.data)
        if rewrite:
            # Only the batch holding message_start is re-encoded, once per stream.
            return b"".join(
                encode(sse.event or "message", self._with_model(sse.data) if sse.event == "message_start" else orjson.loads(sse.data))
                for sse in events
            )
        return complete

    def _watch(self, kind: str, data: str) -> bool:
        if kind == "message_stop" or kind == "error":
            self.finished = True
            return False
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(f"the model's backend sent a {kind} event that is not JSON") from None
        if kind == "message_start":
            message = payload.get("message") or {}
            self.usage.update({k: v for k, v in (message.get("usage") or {}).items() if isinstance(v, int)})
            if self._started:
                return False
            self._started = True
            return True
        delta_usage = payload.get("usage") or {}
        self.usage.update({k: v for k, v in delta_usage.items() if isinstance(v, int)})
        self.stop_reason = (payload.get("delta") or {}).get("stop_reason") or self.stop_reason
        return False

    def _with_model(self, data: str) -> dict:
        payload = orjson.loads(data)
        if isinstance(payload.get("message"), dict):
            payload["message"]["model"] = self._model
        return payload

    def end(self) -> bytes:
        if self.finished:
            return b""
        return self.fail(GatewayError(_ENDED_EARLY))

    def fail(self, error: GatewayError) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        return encode_json(error.body(None))
