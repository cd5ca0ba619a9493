"""Server-sent events: an incremental decoder for upstream bytes and the encoder for client events.

The decoder has the shape of httpx's `_decoders`: `feed(bytes)` returns the events that
the bytes completed, `flush()` the one the end of the stream completed. It accepts any
split of the stream (a read may end mid-line, mid-`\\r\\n` or inside a UTF-8 character)
and gives the same events for every split. Lines are split on bytes *before* decoding:
`\\r` and `\\n` never occur inside a multi-byte UTF-8 sequence, so a character cut between
two reads is decoded whole (docs/protocol-mapping.md, pitfall P18) without an incremental text
decoder.

Field rules follow the WHATWG event-stream interpretation, as the Anthropic SDK's own
decoder does: `\\r\\n`, `\\n` and `\\r` end a line; a blank line ends an event; lines
starting with `:` are comments; one space after the colon is dropped; several `data:`
lines are joined with `\\n`; an event without `data:` lines is not emitted; the last
`id:` persists across events. Unlike the SDK decoder, `flush()` also emits an event the
upstream did not end with a blank line (some servers close right after the last line).

Bounded: a line longer than `max_event` bytes (its end not counted), or an event whose
`data:` lines add up to more, raises `SseOverflow`, at the same point of the stream for
every split of it, with the events that came before; the decoder is then spent. A
stream that never ends a line cannot grow the decoder past that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import UpstreamProtocolError

DONE = "[DONE]"  # OpenAI's end-of-stream sentinel; never sent to a Messages client
MAX_EVENT = 8 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str | None
    data: str
    id: str | None = None


class SseOverflow(UpstreamProtocolError):
    """A line or an event past the decoder's `max_event`; `events`: those completed before it."""

    def __init__(self, limit: int, events: list[SseEvent]) -> None:
        super().__init__(f"the model's backend sent a stream line or event longer than {limit} bytes")
        self.events = events


class SseDecoder:
    """Upstream bytes → `SseEvent`s. One per upstream response; not thread-safe."""

    __slots__ = ("_pending", "_pending_size", "_skip_lf", "_head", "_event", "_data", "_data_size", "_last_id", "_max")

    def __init__(self, max_event: int = MAX_EVENT) -> None:
        self._pending: list[bytes] = []  # the current unterminated line, in pieces
        self._pending_size = 0
        self._skip_lf = False  # the previous read ended with `\r`: a leading `\n` belongs to it
        self._head: bytes | None = b""  # bytes seen while a leading BOM is still possible
        self._event: str | None = None
        self._data: list[str] = []
        self._data_size = 0  # bytes of the current event's `data:` lines
        self._last_id: str | None = None
        self._max = max_event

    def feed(self, data: bytes) -> list[SseEvent]:
        """The events `data` completed. Raises `SseOverflow` past `max_event`."""
        events: list[SseEvent] = []
        try:
            return self._feed(data, events)
        except _Overflow:
            raise self._overflow(events) from None

    def _feed(self, data: bytes, events: list[SseEvent]) -> list[SseEvent]:
        if self._head is not None:
            data = self._strip_bom(data)
            if not data:
                return []
        if self._skip_lf:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        # Whole events no longer than the cap hold no line or event past it.
        if len(data) <= self._max and self._clean() and data.endswith(b"\n\n") and b"\r" not in data:
            return self._whole_events(data)
        if b"\n" not in data and b"\r" not in data:
            # No line ends here: keep the piece (joining once, later, keeps long lines linear).
            if data:
                self._hold(data)
            return []
        if self._pending:
            self._pending.append(data)
            data = b"".join(self._pending)
            self._pending = []
            self._pending_size = 0
        if b"\r" in data:
            if data.endswith(b"\r"):
                self._skip_lf = True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = data.split(b"\n")
        rest = lines.pop()
        for line in lines:
            self._line(line, events)
        if rest:
            self._hold(rest)
        return events

    def _hold(self, piece: bytes) -> None:
        """Keep a piece of the line not yet ended."""
        self._pending_size += len(piece)
        if self._pending_size > self._max:
            raise _Overflow
        self._pending.append(piece)

    def _overflow(self, events: list[SseEvent]) -> SseOverflow:
        """What `feed` or `flush` raises past the cap; nothing held is kept."""
        self._pending, self._pending_size = [], 0
        self._data, self._data_size = [], 0
        self._event = None
        return SseOverflow(self._max, events)

    def _clean(self) -> bool:
        """Between events: nothing pending, nothing half-read."""
        return not self._pending and not self._data and self._event is None and self._head is None

    def data_only(self, data: bytes) -> list[bytes] | None:
        """The `data` of each event in `data`, when it holds nothing but whole events of one
        `data: ` line each, read between events (a Chat Completions stream, read by read);
        otherwise None, and nothing is consumed: call `feed`. Same events, minus the
        `SseEvent` for each and the decoding to text (JSON parsers take bytes)."""
        if self._head is not None:  # the stream's first read: a BOM is `feed`'s to strip
            if data.startswith(b"data: "):
                self._head = None
            else:
                return None
        if len(data) > self._max or self._skip_lf or not self._clean() or not data.endswith(b"\n\n") or b"\r" in data:
            return None
        if data.find(b"\n") == len(data) - 2:  # one event: a paced stream's usual read
            return [data[6:-2]] if data.startswith(b"data: ") else None
        # Whole one-line events are `data: …`, an empty line, `data: …`, an empty line…:
        # one split on line ends (memchr) tells, with no Python walk over the bytes.
        lines = data.split(b"\n")  # the last two are the final blank line's
        if len(lines) % 2 == 0 or any(lines[1::2]):
            return None
        payloads = [line[6:] for line in lines[0:-1:2] if line[:6] == b"data: "]
        return payloads if 2 * len(payloads) + 1 == len(lines) else None

    def _whole_events(self, data: bytes) -> list[SseEvent]:
        """The usual read: whole events, each often one `data: ` line (Chat Completions
        streams are nothing else). Those are taken without the line-by-line walk; any
        other event goes through it, with the same result."""
        events: list[SseEvent] = []
        for block in data.split(b"\n\n"):
            if not block:
                continue
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append(SseEvent(None, block[6:].decode("utf-8", "replace"), self._last_id))
                continue
            for line in block.split(b"\n"):
                self._line(line, events)
            self._line(b"", events)
        return events

    def flush(self) -> list[SseEvent]:
        """The end of the stream: a last line and event without their terminators still count."""
        events: list[SseEvent] = []
        self._head = None  # still undecided means: nothing but a cut-off BOM arrived
        self._skip_lf = False
        try:
            if self._pending:
                line = b"".join(self._pending)
                self._pending, self._pending_size = [], 0
                self._line(line, events)
            self._line(b"", events)
        except _Overflow:
            raise self._overflow(events) from None
        return events

    def _strip_bom(self, data: bytes) -> bytes:
        """Drop a UTF-8 BOM at the very start of the stream, even if it arrives split."""
        head = self._head + data  # type: ignore[operator]
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._head = head
            return b""
        self._head = None
        return head.removeprefix(_BOM)

    def _line(self, line: bytes, events: list[SseEvent]) -> None:
        if not line:
            if self._data:
                events.append(SseEvent(self._event, "\n".join(self._data), self._last_id))
            self._event = None
            self._data = []
            self._data_size = 0
            return
        if len(line) > self._max:
            raise _Overflow
        if line[0] == 0x3A:  # ":" comment (keep-alives)
            return
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data_size += len(line)
            if self._data_size > self._max:
                raise _Overflow
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                self._last_id = value.decode("utf-8", "replace")
        # `retry:` and unknown fields are ignored.


class _Overflow(Exception):
    """Past the cap, inside the decoder: `feed` and `flush` raise it as `SseOverflow`."""


def encode(event_type: str, data: Mapping[str, Any]) -> bytes:
    """One Messages event on the wire: `event: <type>`, one compact `data:` line, blank line.

    JSON escapes every `\\r` and `\\n` inside strings, so the data is always one line.
    """
    head = _HEADS.get(event_type)
    if head is None:
        head = b"event: " + event_type.encode() + b"\ndata: "
    return b"".join((head, orjson.dumps(data), b"\n\n"))


# The Messages event types, their first bytes made once.
_HEADS = {
    name: b"event: " + name.encode() + b"\ndata: "
    for name in (
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    )
}


def encode_json(data: Mapping[str, Any]) -> bytes:
    """`encode` with the event name taken from the payload's `type`, as the SDK requires."""
    return encode(data["type"], data)
