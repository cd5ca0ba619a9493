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

from gateway.errors import GatewayError, UpstreamProtocolError
from gateway.protocols.messages import StreamEvent, Usage
from gateway.protocols.sse import DONE, MAX_EVENT, SseDecoder, SseOverflow, encode_json
from gateway.translate.messages_chat.request import ChatCall
from gateway.translate.messages_chat.stream import ChatStreamTranslator
from gateway.translate.stream_failures import ended_early, tagged


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
    def usage(self) -> Usage:
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
        return tail + self._failed(ended_early())

    def fail(self, error: GatewayError) -> bytes:
        """The closing `error` event for a failure the pump met (a reset, a stall, a
        client gone); the relay's own failures are recorded in `failure` by `_failed`."""
        return self._encode(self._translator.fail(error))

    def _failed(self, error: GatewayError) -> bytes:
        if self.failure is None and not self._translator.finished:
            self.failure = tagged(error)
        return self.fail(error)

    def _encode(self, events: list[StreamEvent]) -> bytes:
        if not events:
            return b""
        if not self.has_content:
            self.has_content = _has_delta(events)
        return b"".join(map(encode_json, events))


def _has_delta(events: list[StreamEvent]) -> bool:
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
