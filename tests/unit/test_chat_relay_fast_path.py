"""The Chat relay's fast path (text-only chunks written from a template, data-only reads
taken without `SseEvent`s) gives the same bytes, usage and state as the general path,
for every recorded stream and for generated streams split anywhere."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.backends.presets import ChatDialect
from gateway.protocols.sse import SseDecoder
from gateway.relay import ChatRelay
from gateway.translate.chat_request import to_chat_request
from gateway.translate.chat_stream import ChatStreamTranslator

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
    return {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


TEXT = st.text(min_size=0, max_size=6)
CHUNKS = st.one_of(
    TEXT.map(lambda t: chunk({"content": t})),
    TEXT.map(lambda t: chunk({"role": "assistant", "content": t})),
    TEXT.map(lambda t: chunk({"reasoning_content": t})),
    TEXT.map(lambda t: chunk({"content": t, "refusal": None})),
    TEXT.map(lambda t: chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": t}}]})),
    st.sampled_from(["stop", "length", "tool_calls"]).map(lambda f: chunk({}, f)),
    st.just({"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
    TEXT.map(lambda t: chunk({"content": t}, usage={"prompt_tokens": 3, "completion_tokens": 2})),
    TEXT.map(lambda t: {"id": "c1", "choices": [{"index": 1, "delta": {"content": t}}]}),
    TEXT.map(lambda t: {"id": "c1", "choices": [{"delta": {"content": t}, "finish_reason": None, "stop_reason": None}]}),
)


def wire(chunks: list[dict], comments: bool) -> bytes:
    parts = []
    for n, item in enumerate(chunks):
        if comments and n % 3 == 1:
            parts.append(b": keep-alive\n\n")
        parts.append(b"data: " + orjson.dumps(item) + b"\n\n")
    return b"".join(parts) + b"data: [DONE]\n\n"


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(CHUNKS, max_size=12), comments=st.booleans(), cuts=st.lists(st.integers(0, 4000), max_size=6))
def test_generated_streams_split_anywhere(chunks, comments, cuts):
    data = wire(chunks, comments)
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
    assert taken == [False] + [True] * 5  # the first opens the block; the rest continue it
