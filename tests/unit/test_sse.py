"""The SSE decoder accepts any split of the byte stream (STYLE §3.6, pitfalls P17, P18).

Every recorded upstream stream under `fixtures/chat/streams/raw/` is decoded in one
piece, split at every byte offset, byte by byte, and (for the short one) split at every
pair of offsets; all must give the same events. A hypothesis test does the same for
generated streams with random line ends, comments and multi-byte characters, and checks
the events against the ones the stream was built from.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols.sse import DONE, SseDecoder, SseEvent, encode, encode_json

RAW = Path(__file__).resolve().parents[1] / "fixtures" / "chat" / "streams" / "raw"
RAW_FILES = sorted(RAW.glob("*.sse"))

# Every edge in ~160 bytes: BOM, comment, CRLF, bare CR, LF, `data:` without a space,
# a JSON object over two data lines, `event:`/`id:` fields, an event without data,
# 2-, 3- and 4-byte UTF-8 characters, and a last event without its blank line.
SHORT = (
    b"\xef\xbb\xbf: hi\r\n\r\n"
    b'data:{"a":"\xc3\xa9\xe4\xbd\xa0"}\r\r'
    b"event: x\nid: 7\ndata: {\"b\":\n"
    b'data: "\xf0\x9f\x8c\x8d"}\n\n'
    b"event: empty\n\n"
    b"data: [DONE]\r\n\r\n"
    b"data: tail"
)


def decode(pieces: list[bytes]) -> list[SseEvent]:
    decoder = SseDecoder()
    events: list[SseEvent] = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events + decoder.flush()


def test_raw_fixtures_exist():
    assert len(RAW_FILES) >= 6


@pytest.mark.parametrize("path", RAW_FILES, ids=lambda p: p.stem)
def test_every_single_split_decodes_the_same(path: Path):
    data = path.read_bytes()
    whole = decode([data])
    assert whole, "the fixture decodes to no events"
    for i in range(len(data) + 1):
        assert decode([data[:i], data[i:]]) == whole, f"split at byte {i}"


@pytest.mark.parametrize("path", RAW_FILES, ids=lambda p: p.stem)
def test_byte_by_byte_decodes_the_same(path: Path):
    data = path.read_bytes()
    assert decode([data[i : i + 1] for i in range(len(data))]) == decode([data])


@pytest.mark.parametrize("path", RAW_FILES, ids=lambda p: p.stem)
def test_raw_fixture_data_is_json_or_done(path: Path):
    for event in decode([path.read_bytes()]):
        assert "\ufffd" not in event.data
        if event.data != DONE:
            orjson.loads(event.data)


def test_short_stream_events():
    assert decode([SHORT]) == [
        SseEvent(None, '{"a":"é你"}'),
        SseEvent("x", '{"b":\n"🌍"}', "7"),
        SseEvent(None, DONE, "7"),  # the last id persists, as the SSE spec says
        SseEvent(None, "tail", "7"),  # flushed at EOF without its blank line
    ]


def test_short_stream_every_pair_of_splits():
    whole = decode([SHORT])
    n = len(SHORT)
    for i in range(n + 1):
        for j in range(i, n + 1):
            assert decode([SHORT[:i], SHORT[i:j], SHORT[j:]]) == whole, f"splits at {i}, {j}"


def test_cr_then_lf_in_the_next_read_is_one_line_end():
    assert decode([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == [SseEvent(None, "a\nb")]


def test_split_character_is_never_replaced():
    text = "é你🌍"
    raw = b"data: " + text.encode() + b"\n\n"
    for i in range(len(raw) + 1):
        assert decode([raw[:i], raw[i:]]) == [SseEvent(None, text)]


def test_field_rules():
    raw = (
        b"data\n\n"  # a field name alone: empty data
        b"data:  two spaces\n\n"  # only one space is dropped
        b"retry: 10\nfoo: bar\ndata: x\n\n"  # ignored fields
        b"event: only\n\n"  # no data: not emitted, and the name does not leak
        b"data: y\n\n"
        b"id: a\0b\ndata: z\n\n"  # an id with NUL is ignored
    )
    assert decode([raw]) == [
        SseEvent(None, ""),
        SseEvent(None, " two spaces"),
        SseEvent(None, "x"),
        SseEvent(None, "y"),
        SseEvent(None, "z"),
    ]


def test_incomplete_event_waits_for_the_blank_line():
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"data: b\n") == []
    assert decoder.feed(b"\n") == [SseEvent(None, "a\nb")]
    assert decoder.flush() == []


def test_a_long_line_in_many_small_reads():
    payload = "x" * 100_000
    raw = b"data: " + payload.encode() + b"\n\n"
    assert decode([raw[i : i + 7] for i in range(0, len(raw), 7)]) == [SseEvent(None, payload)]


def test_bom_only_at_the_start():
    assert decode([b"\xef", b"\xbb", b"\xbfdata: a\n\n"]) == [SseEvent(None, "a")]
    # a BOM later in the stream is part of the line (here it makes an unknown field name)
    assert decode([b"data: a\n\n\xef\xbb\xbfdata: b\n\n"]) == [SseEvent(None, "a")]


# ---------------------------------------------------------------------------- encode


def test_encode_exact_bytes():
    assert encode("message_stop", {"type": "message_stop"}) == b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    event = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a\nb\r\u2028 🌍"}}
    wire = encode_json(event)
    assert wire.startswith(b"event: content_block_delta\ndata: {")
    assert wire.count(b"\n") == 3 and b"\r" not in wire  # one data line, whatever the text holds
    assert wire == b"event: content_block_delta\ndata: " + orjson.dumps(event) + b"\n\n"


def test_encode_round_trip():
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "content": [], "usage": {"input_tokens": 1}}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "你好\n\"q\" 🌍"}},
        {"type": "message_stop"},
    ]
    decoded = decode([b"".join(encode_json(e) for e in events)])
    assert [d.event for d in decoded] == [e["type"] for e in events]
    assert [json.loads(d.data) for d in decoded] == events


# ---------------------------------------------------------------------------- property

_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\0"),
    max_size=12,
)
_EVENT = st.tuples(st.one_of(st.none(), _TEXT), st.lists(_TEXT, min_size=1, max_size=3), st.booleans())
_ENDINGS = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def _streams(draw) -> tuple[bytes, list[SseEvent]]:
    """A byte stream and the events it must decode to."""
    lines: list[bytes] = []
    expected: list[SseEvent] = []
    last_id: str | None = None
    if draw(st.booleans()):
        lines.append(b": " + draw(_TEXT).encode())
    for name, data, with_id in draw(st.lists(_EVENT, max_size=6)):
        if draw(st.booleans()):
            lines.append(b":" + draw(_TEXT).encode())  # a comment inside the event
        if name is not None:
            lines.append(b"event: " + name.encode())
        if with_id:
            last_id = draw(_TEXT)
            lines.append(b"id: " + last_id.encode())
        for value in data:
            lines.append((b"data: " if draw(st.booleans()) or value.startswith(" ") else b"data:") + value.encode())
        lines.append(b"")
        expected.append(SseEvent(name, "\n".join(data), last_id))
    out: list[bytes] = []
    previous = b""
    for line in lines:
        ending = draw(_ENDINGS)
        if previous == b"\r" and not line and ending == b"\n":
            ending = b"\r"  # `\r` + `\n` would be one line end, not a blank line
        out.append(line + ending)
        previous = ending
    bom = b"\xef\xbb\xbf" if draw(st.booleans()) else b""
    return bom + b"".join(out), expected


@settings(max_examples=200, deadline=None)
@given(stream=_streams(), cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8))
def test_any_split_gives_the_events_the_stream_was_built_from(stream, cuts):
    raw, expected = stream
    points = sorted({c % (len(raw) + 1) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    assert decode([raw]) == expected
    assert decode(pieces) == expected


@settings(max_examples=200, deadline=None)
@given(text=st.text(min_size=1, max_size=40), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_multibyte_characters_cut_anywhere(text, cuts):
    payload = orjson.dumps({"content": text})
    raw = b"data: " + payload + b"\r\n\r\ndata: [DONE]\r\n\r\n"
    points = sorted({c % (len(raw) + 1) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    events = decode(pieces)
    assert [orjson.loads(events[0].data)["content"], events[1].data] == [text, DONE]
