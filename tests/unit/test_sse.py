"""The SSE decoder accepts any split of the byte stream (pitfalls P17, P18 in
docs/protocol-mapping.md).

Every recorded upstream stream under `fixtures/chat/streams/raw/` is decoded in one
piece, split at every byte offset, byte by byte, and (for the short one) split at every
pair of offsets; all must give the same events. A hypothesis test does the same for
generated streams with random line ends, comments and multi-byte characters, and checks
the events against the ones the stream was built from.

With a cap (`max_event`), a line or an event past it ends the decoding at the same point
for every split, with the same events before it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols.sse import DONE, MAX_EVENT, SseDecoder, SseEvent, SseOverflow, encode, encode_json

RAW = Path(__file__).resolve().parents[1] / "fixtures" / "chat" / "streams" / "raw"
RAW_FILES = sorted(RAW.glob("*.sse"))

# Every edge in ~160 bytes: BOM, comment, CRLF, bare CR, LF, `data:` without a space,
# a JSON object over two data lines, `event:`/`id:` fields, an event without data,
# 2-, 3- and 4-byte UTF-8 characters, and a last event without its blank line.
SHORT = (
    b"\xef\xbb\xbf: hi\r\n\r\n"
    b'data:{"a":"\xc3\xa9\xe4\xbd\xa0"}\r\r'
    b'event: x\nid: 7\ndata: {"b":\n'
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


# ---------------------------------------------------------------------------- caps


def decode_capped(pieces: list[bytes], cap: int) -> tuple[list[SseEvent], bool]:
    """The events decoded before the cap was passed, and whether it was."""
    decoder = SseDecoder(cap)
    events: list[SseEvent] = []
    try:
        for piece in pieces:
            events += decoder.feed(piece)
        events += decoder.flush()
    except SseOverflow as overflow:
        return events + overflow.events, True
    return events, False


def capped_reference(raw: bytes, cap: int) -> tuple[int, bool]:
    """How many events come before the cap is passed, and whether it is, read line by line:
    a line (without its end) or an event's `data:` lines together longer than `cap`."""
    lines = re.split(rb"\r\n|\r|\n", raw.removeprefix(b"\xef\xbb\xbf"))
    complete, data = 0, None
    for line in [*lines, b""]:
        if not line:
            complete += data is not None
            data = None
            continue
        if len(line) > cap:
            return complete, True
        if line.partition(b":")[0] == b"data":
            data = (data or 0) + len(line)
            if data > cap:
                return complete, True
    return complete, False


def test_the_default_cap_is_8_mib():
    assert MAX_EVENT == 8 * 1024 * 1024
    line = b"data: " + b"x" * (MAX_EVENT - 6)
    assert decode_capped([line + b"\n\n"], MAX_EVENT) == ([SseEvent(None, "x" * (MAX_EVENT - 6))], False)
    assert decode_capped([line + b"x\n\n"], MAX_EVENT) == ([], True)


def test_a_line_past_the_cap_ends_the_stream_after_the_events_before_it():
    raw = b"data: one\n\ndata: two\n\n: " + b"c" * 62 + b"\n\ndata: " + b"x" * 59 + b"\n\ndata: never\n\n"
    for i in range(len(raw) + 1):
        assert decode_capped([raw[:i], raw[i:]], 64) == ([SseEvent(None, "one"), SseEvent(None, "two")], True), i
    assert decode_capped([raw], 65) == ([SseEvent(None, s) for s in ("one", "two", "x" * 59, "never")], False)


def test_an_event_whose_data_lines_add_up_past_the_cap_ends_the_stream():
    raw = b"data: ok\n\n" + b"data: 0123456789\n" * 4 + b"\ndata: ok\n\n" + b"data: 0123456789\n" * 5 + b"\n"
    assert decode_capped([raw], 64) == (
        [SseEvent(None, "ok"), SseEvent(None, "\n".join(["0123456789"] * 4)), SseEvent(None, "ok")],
        True,
    )


def test_a_line_that_never_ends_is_refused_once_past_the_cap():
    decoder = SseDecoder(1000)
    assert decoder.feed(b"data: ok\n\ndata: ") == [SseEvent(None, "ok")]
    fed = 6
    with pytest.raises(SseOverflow) as caught:
        while True:
            decoder.feed(b"x" * 100)
            fed += 100
            assert fed <= 1000  # raised by the read that passes the cap, not later
    assert caught.value.events == [] and fed + 100 > 1000
    assert caught.value.error_type == "api_error"


def test_a_last_event_past_the_cap_at_the_end_of_the_stream():
    decoder = SseDecoder(64)
    assert decoder.feed(b"data: " + b"a" * 40 + b"\ndata: " + b"b" * 20) == []
    with pytest.raises(SseOverflow):
        decoder.flush()


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
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": '你好\n"q" 🌍'}},
        {"type": "message_stop"},
    ]
    decoded = decode([b"".join(encode_json(e) for e in events)])
    assert [d.event for d in decoded] == [e["type"] for e in events]
    assert [json.loads(d.data) for d in decoded] == events


# ---------------------------------------------------------------------------- property

_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\0"), max_size=12)
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


@settings(max_examples=300, deadline=None)
@given(
    stream=_streams(),
    cap=st.integers(min_value=1, max_value=60),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
)
def test_any_split_meets_the_cap_at_the_same_point(stream, cap, cuts):
    raw, expected = stream
    points = sorted({c % (len(raw) + 1) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    count, overflowed = capped_reference(raw, cap)
    assert decode_capped([raw], cap) == (expected[:count], overflowed)
    assert decode_capped(pieces, cap) == (expected[:count], overflowed)
    assert decode_capped([raw[i : i + 1] for i in range(len(raw))], cap) == (expected[:count], overflowed)
