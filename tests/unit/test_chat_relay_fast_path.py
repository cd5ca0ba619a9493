"""The Chat relay's fast path (text-only chunks written from a template, chunks shaped like
the last one not parsed at all, data-only reads taken without `SseEvent`s) gives the same
bytes, usage and state as the general path, for every recorded stream and for generated
streams, encoded in several ways and split anywhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.backends.presets import ChatDialect
from gateway.protocols.sse import SseDecoder
from gateway.translate.messages_chat.relay import ChatRelay
from gateway.translate.messages_chat.request import to_chat_request
from gateway.translate.messages_chat.stream import ChatStreamTranslator

MESSAGE_ID = re.compile(rb"msg_[0-9a-f]{24}")
RAW = Path(__file__).resolve().parents[1] / "fixtures" / "chat" / "streams" / "raw"
CALL = to_chat_request(
    {"model": "m", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    upstream_model="up",
    dialect=ChatDialect(),
)


def relay(pieces: list[bytes], *, fast: bool) -> tuple[bytes, dict, bool]:
    with pytest.MonkeyPatch.context() as patch:
        if not fast:
            patch.setattr(ChatStreamTranslator, "text_continuation", lambda self, chunk: None)
            patch.setattr(SseDecoder, "data_only", lambda self, data: None)
            patch.setattr(ChatRelay, "_learn", lambda self, data, literal: None)
        chat = ChatRelay(CALL, input_tokens=7)
        out = [chat.start()]
        try:
            for piece in pieces:
                out.append(chat.feed(piece))
            out.append(chat.end())
        except Exception as exc:  # the same failure either way
            out.append(repr(exc).encode())
        # The message id is made at random when no chunk has named one yet.
        return MESSAGE_ID.sub(b"msg_", b"".join(out)), chat.usage, chat.has_content


def chunk(delta: dict | None = None, finish: str | None = None, **extra) -> dict:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
        **extra,
    }


TEXT = st.text(min_size=0, max_size=6)
CHUNKS = st.one_of(
    TEXT.map(lambda t: chunk({"content": t})),
    TEXT.map(lambda t: chunk({"role": "assistant", "content": t})),
    TEXT.map(lambda t: chunk({"reasoning_content": t})),
    TEXT.map(lambda t: chunk({"content": t, "refusal": None})),
    TEXT.map(
        lambda t: chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": t}}]})
    ),
    st.sampled_from(["stop", "length", "tool_calls"]).map(lambda f: chunk({}, f)),
    st.just({"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
    TEXT.map(lambda t: chunk({"content": t}, usage={"prompt_tokens": 3, "completion_tokens": 2})),
    TEXT.map(lambda t: {"id": "c1", "choices": [{"index": 1, "delta": {"content": t}}]}),
    TEXT.map(
        lambda t: {"id": "c1", "choices": [{"delta": {"content": t}, "finish_reason": None, "stop_reason": None}]}
    ),
)


# How servers write JSON: compact UTF-8 (orjson, Go, Rust), Python's default (spaces,
# every non-ASCII character escaped), and compact with escapes.
ENCODINGS = {
    "orjson": orjson.dumps,
    "python": lambda item: json.dumps(item).encode(),
    "ascii": lambda item: json.dumps(item, separators=(",", ":")).encode(),
}


def wire(chunks: list[dict], comments: bool, encoding: str = "orjson") -> bytes:
    encode = ENCODINGS[encoding]
    parts = []
    for n, item in enumerate(chunks):
        if comments and n % 3 == 1:
            parts.append(b": keep-alive\n\n")
        parts.append(b"data: " + encode(item) + b"\n\n")
    return b"".join(parts) + b"data: [DONE]\n\n"


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(CHUNKS, max_size=12),
    comments=st.booleans(),
    cuts=st.lists(st.integers(0, 4000), max_size=6),
    encoding=st.sampled_from(sorted(ENCODINGS)),
)
def test_generated_streams_split_anywhere(chunks, comments, cuts, encoding):
    data = wire(chunks, comments, encoding)
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    pieces = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    whole = [data]
    assert relay(pieces, fast=True) == relay(pieces, fast=False)
    assert relay(whole, fast=True) == relay(whole, fast=False)


@pytest.mark.parametrize("path", sorted(RAW.glob("*.sse")), ids=lambda p: p.stem)
def test_recorded_streams_read_by_event(path):
    data = path.read_bytes()
    events = [event + b"\n\n" for event in data.split(b"\n\n") if event]
    assert relay(events, fast=True) == relay(events, fast=False)


def test_the_fast_path_is_taken_for_text_chunks(monkeypatch):
    taken = []
    original = ChatStreamTranslator.text_continuation

    def spy(self, item):
        text = original(self, item)
        taken.append(text is not None)
        return text

    monkeypatch.setattr(ChatStreamTranslator, "text_continuation", spy)
    chat = ChatRelay(CALL)
    chat.start()
    chat.feed(wire([chunk({"role": "assistant", "content": "a"}), *[chunk({"content": "b"})] * 5], False))
    # The first opens the block, the second continues it (its shape is learned); the rest
    # are shaped like it and not parsed (test below).
    assert taken == [False, True]


def test_chunks_shaped_like_the_last_are_not_parsed(monkeypatch):
    parsed = []
    real_loads = orjson.loads
    monkeypatch.setattr(
        "gateway.translate.messages_chat.relay.orjson.loads", lambda data: parsed.append(data) or real_loads(data)
    )
    texts = ["b", "c d", 'e "quoted"', "f\\g", "é", "h", "i\u0001", "j"]
    chat = ChatRelay(CALL)
    chat.start()
    out = chat.feed(
        wire([chunk({"role": "assistant", "content": "a"}), *(chunk({"content": t}) for t in texts)], False)
    )
    # Parsed: the first (it opens the block), the second (its shape is learned from it),
    # the ones whose text an encoder escapes or that is not ASCII, and `[DONE]`'s check
    # needs none.
    assert [real_loads(p)["choices"][0]["delta"]["content"] for p in parsed] == [
        "a",
        "b",
        'e "quoted"',
        "f\\g",
        "é",
        "i\u0001",
    ]
    deltas = [real_loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")]
    assert [d["delta"]["text"] for d in deltas if d["type"] == "content_block_delta"] == ["a", *texts]


def test_a_chunk_with_other_fields_is_parsed_and_translated_in_full():
    # Same bytes around the text would be needed: here the finish_reason differs.
    chat = ChatRelay(CALL)
    chat.start()
    chat.feed(wire([chunk({"content": "a"}), chunk({"content": "b"}), chunk({"content": "c"}, "length")], False))
    assert chat.done and b"max_tokens" in chat.end()
