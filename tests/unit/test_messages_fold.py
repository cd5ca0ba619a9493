"""MessageFold folds Messages events as the official SDK accumulator does (docs/protocol-mapping.md §2.3).

The reference is the installed `anthropic` SDK's own `accumulate_event`: every stream
golden and the recorded native stream are folded by both and must agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from gateway.protocols.messages_fold import MessageFold
from gateway.protocols.sse import SseDecoder

anthropic_streaming = pytest.importorskip("anthropic.lib.streaming._messages")

STREAMS = Path(__file__).resolve().parents[1] / "fixtures" / "chat" / "streams"
NATIVE = STREAMS / "raw" / "native_messages.sse"


def sdk_fold(events: list[dict]) -> dict:
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for event in events:
        if event["type"] == "error":
            break
        snapshot = anthropic_streaming.accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    return snapshot.to_dict(exclude_none=True)


def comparable(message: dict) -> dict:
    return json.loads(json.dumps({k: v for k, v in message.items() if v is not None}))


def native_events() -> list[dict]:
    decoder = SseDecoder()
    return [orjson.loads(e.data) for e in decoder.feed(NATIVE.read_bytes()) + decoder.flush()]


def start(**usage: int) -> dict:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "m",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1, **usage},
        },
    }


def test_native_stream():
    events = native_events()
    assert events == json.loads((STREAMS / "raw" / "native_messages.events.json").read_text())
    fold = MessageFold.of(events, strict=True)
    message = fold.message
    assert message["content"] == [
        {"type": "thinking", "thinking": "Weather → tool. ", "signature": "EuYBCkQYAiJA"},
        {"type": "text", "text": "Je vérifie — 天气 ☀️"},
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert message["stop_reason"] == "tool_use" and message["stop_sequence"] is None
    # message_delta without input_tokens keeps message_start's count (§2.3 rule 5)
    assert fold.usage == {
        "input_tokens": 472,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 89,
    }
    assert fold.stopped and fold.error is None and fold.problems == []
    assert comparable(message) == sdk_fold(events)


@pytest.mark.parametrize("path", sorted(STREAMS.glob("*.json")), ids=lambda p: p.stem)
def test_goldens_fold_like_the_sdk(path: Path):
    events = json.loads(path.read_text())["events"]
    fold = MessageFold.of(events, strict=True)
    assert comparable(fold.message) == sdk_fold(events)
    if events[-1]["type"] == "error":
        assert fold.error == events[-1]["error"] and not fold.stopped


def test_input_events_are_not_mutated():
    events = native_events()
    before = orjson.dumps(events)
    assert MessageFold.of(events).message["type"] == "message"
    assert orjson.dumps(events) == before


def test_message_delta_overwrites_and_keeps():
    fold = MessageFold.of(
        [
            start(cache_read_input_tokens=5),
            {
                "type": "message_delta",
                "delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"},
                "usage": {"output_tokens": 3},
            },
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 7, "input_tokens": 12, "cache_read_input_tokens": None},
            },
            {"type": "message_stop"},
        ]
    )
    assert fold.stop_reason == "end_turn" and fold.message["stop_sequence"] is None  # overwritten, even with null
    assert fold.usage == {"input_tokens": 12, "output_tokens": 7, "cache_read_input_tokens": 5}  # null keeps 5


def test_block_index_is_not_read_at_start():
    """content_block_start appends whatever its index says, as the SDK does."""
    fold = MessageFold.of(
        [
            start(),
            {"type": "content_block_start", "index": 5, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a"}},
        ]
    )
    assert fold.message["content"] == [{"type": "text", "text": "a"}]


def test_mismatched_deltas_are_ignored():
    fold = MessageFold.of(
        [
            start(),
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}},
            },
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ignored"}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "new_future_delta", "x": 1}},
            {"type": "content_block_stop", "index": 0},
            {"type": "some_future_event"},
            {"type": "ping"},
        ],
        strict=True,
    )
    assert fold.message["content"] == [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]


def test_citations_and_redacted_thinking():
    citation = {
        "type": "char_location",
        "cited_text": "x",
        "document_index": 0,
        "start_char_index": 0,
        "end_char_index": 1,
    }
    events = [
        start(),
        {"type": "content_block_start", "index": 0, "content_block": {"type": "redacted_thinking", "data": "opaque"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "citations_delta", "citation": citation}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "x"}},
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 2},
        },
        {"type": "message_stop"},
    ]
    fold = MessageFold.of(events, strict=True)
    assert fold.message["content"] == [
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "text", "text": "x", "citations": [citation]},
    ]
    assert comparable(fold.message) == sdk_fold(events)


def test_error_event_is_kept():
    fold = MessageFold.of([start(), {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}])
    assert fold.error == {"type": "overloaded_error", "message": "busy"} and not fold.stopped
    assert (
        MessageFold.of([{"type": "error", "error": {"type": "api_error", "message": "x"}}]).error["type"] == "api_error"
    )


@pytest.mark.parametrize(
    "events",
    [
        [{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}],
        [start(), {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}}],
        [
            start(),
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}},
            },
            {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{nope"}},
            {"type": "content_block_stop", "index": 0},
        ],
        [start(), {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}],
    ],
    ids=["before-start", "no-such-block", "bad-json", "no-usage"],
)
def test_what_the_sdk_raises_on(events: list[dict]):
    with pytest.raises(ValueError):
        MessageFold.of(events, strict=True)
    lenient = MessageFold.of(events)  # accounting keeps going and says why
    assert len(lenient.problems) == 1


def test_long_streams_fold_in_linear_time():
    events = [start(), {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}]
    events += [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x" * 50}}] * 50_000
    fold = MessageFold.of(events)
    assert len(fold.message["content"][0]["text"]) == 2_500_000
    fold.feed({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}})
    assert fold.message["content"][0]["text"].endswith("x!")  # reading mid-stream and going on is fine
