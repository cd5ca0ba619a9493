"""Chat Completions chunks → Messages events: goldens, grammar, and streamed = unstreamed.

Each golden in `fixtures/chat/streams/<case>.json` holds a Messages request, the upstream
chunks (objects, or the string "[DONE]") and the exact events the client must get; the
expected events are written from docs/protocol-mapping.md §2 and §6 (P-numbers are its
pitfalls), not printed by the code.
`run()` drives the translator the way the pump does: `start()`, `feed()` per chunk,
chunks after `[DONE]` are still fed (the pump drains until EOF for late usage, §6.3),
then `finish()` if `[DONE]` or a finish_reason was seen, else `fail()` (P16); an error
raised by `feed`/`finish` is answered with `fail(error)`.

Standing checks on every golden: the grammar holds, and for every stream that
ends cleanly, folding the events gives what `from_chat_response` gives for the same
answer unstreamed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError, Overloaded, UpstreamProtocolError
from gateway.protocols.messages_fold import MessageFold
from gateway.protocols.sse import DONE, SseDecoder, encode_json
from gateway.translate.messages_chat import stream as chat_stream
from gateway.translate.messages_chat.dialect import ChatDialect
from gateway.translate.messages_chat.request import ChatCall, to_chat_request
from gateway.translate.messages_chat.response import find_usage, from_chat_response, reasoning_text
from gateway.translate.messages_chat.stream import BlockKind, ChatStreamTranslator, State
from tests.support.grammar import check_stream

STREAMS = Path(__file__).resolve().parents[1] / "fixtures" / "chat" / "streams"
GOLDENS = sorted(STREAMS.glob("*.json"))

# Streams whose unstreamed counterpart cannot say the same thing, and why.
NOT_COMPARABLE = {
    "reasoning_after_text": "an unstreamed message has one reasoning field; the stream has two thinking blocks",
    "thinking_signature": "from_chat_response does not read thinking_blocks signatures",
}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def call_for(case: dict) -> ChatCall:
    return to_chat_request(case["request"], upstream_model="up-model", dialect=ChatDialect())


def run(
    case: dict, translator: ChatStreamTranslator | None = None
) -> tuple[list[dict], ChatStreamTranslator, GatewayError | None]:
    t = translator or ChatStreamTranslator(
        call_for(case), message_id="msg_test", input_tokens=case.get("input_tokens", 0)
    )
    events = t.start()
    error: GatewayError | None = None
    done = False
    try:
        for chunk in case["chunks"]:
            if chunk == DONE:
                done = True
                continue
            events += t.feed(chunk)
        if not (done or t.finish_reason is not None):
            raise GatewayError("upstream stream ended early")
        events += t.finish()
    except GatewayError as exc:
        error = exc
        events += t.fail(exc)
    return events, t, error


def chunks_to_response(chunks: list[Any]) -> dict:
    """Fold Chat Completions chunks into the equivalent non-streamed Chat Completions answer."""
    first_id = next((c["id"] for c in chunks if isinstance(c, dict) and c.get("id")), "chatcmpl-folded")
    texts: list[str] = []
    reasoning: list[str] = []
    refusals: list[str] = []
    calls: list[dict] = []
    by_index: dict[int, dict] = {}
    finish = matched = usage = None
    for chunk in chunks:
        if chunk == DONE:
            continue
        found = find_usage(chunk)
        if found is not None:
            usage = found
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning.append(reasoning_text(delta) or "")
            if isinstance(delta.get("content"), str):
                texts.append(delta["content"])
            if isinstance(delta.get("refusal"), str):
                refusals.append(delta["refusal"])
            for call in delta.get("tool_calls") or []:
                index, call_id = call.get("index", 0), call.get("id")
                function = call.get("function") or {}
                current = by_index.get(index)
                if current is None or (call_id and current["id"] and call_id != current["id"]):
                    current = by_index[index] = {"id": None, "name": None, "arguments": ""}
                    calls.append(current)
                current["id"] = current["id"] or call_id
                current["name"] = current["name"] or function.get("name") or None
                current["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason") is not None:
                finish = choice["finish_reason"]
            for key in ("stop_reason", "matched_stop"):
                if choice.get(key) is not None:
                    matched = choice[key]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if "".join(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    if "".join(refusals):
        message["refusal"] = "".join(refusals)
    if calls:
        message["tool_calls"] = [
            {"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            | ({"id": c["id"]} if c["id"] else {})
            for c in calls
        ]
    choice_out: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
    if matched is not None:
        choice_out["stop_reason"] = matched
    response: dict[str, Any] = {
        "id": first_id,
        "object": "chat.completion",
        "model": "up-model",
        "choices": [choice_out],
    }
    if usage is not None:
        response["usage"] = usage
    return response


# ---------------------------------------------------------------------------- goldens


def test_enough_goldens():
    assert len(GOLDENS) >= 20


@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.stem)
def test_golden(path: Path):
    case = load(path)
    events, t, error = run(case)
    assert events == case["events"]
    if "error" in case:
        assert error is not None and {"type": error.error_type, "message": error.message} == case["error"]
    else:
        assert error is None
    assert t.finished and t.events_emitted == len(events)


@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.stem)
def test_golden_grammar(path: Path):
    case = load(path)
    check_stream(case["events"])
    check_stream(run(case)[0])


@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.stem)
def test_golden_survives_the_wire(path: Path):
    """Encoded, decoded with any read size, parsed: the same events, named by their type."""
    events = run(load(path))[0]
    wire = b"".join(encode_json(e) for e in events)
    for size in (1, 7, 4096):
        decoder = SseDecoder()
        decoded = [x for i in range(0, len(wire), size) for x in decoder.feed(wire[i : i + size])] + decoder.flush()
        assert [d.event for d in decoded] == [e["type"] for e in events]
        assert [orjson.loads(d.data) for d in decoded] == events


@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.stem)
def test_streamed_equals_unstreamed(path: Path):
    case = load(path)
    if "error" in case:
        pytest.skip("the stream ends in an error: there is no unstreamed answer to compare")
    if path.stem in NOT_COMPARABLE:
        pytest.skip(NOT_COMPARABLE[path.stem])
    events, t, _ = run(case)
    fold = MessageFold.of(events, strict=True)
    call = call_for(case)
    response = chunks_to_response(case["chunks"])
    # Ids the gateway makes up (no upstream id) derive from the message id, which a stream
    # must choose before its first chunk: give both translations the same one.
    response["id"] = "msg_test"
    expected = from_chat_response(response, call)
    if not t.usage_reported:
        expected["usage"]["input_tokens"] = case.get("input_tokens", 0)
    message = fold.message
    assert fold.stopped and fold.error is None and fold.problems == []
    for key in ("content", "stop_reason", "stop_sequence", "usage", "model"):
        assert message[key] == expected[key], key
    assert t.usage == expected["usage"]
    assert t.stop_reason == expected["stop_reason"] and t.stop_sequence == expected["stop_sequence"]


RAW = STREAMS / "raw"


@pytest.mark.parametrize(
    "path", [p for p in sorted(RAW.glob("*.sse")) if (STREAMS / f"{p.stem}.json").exists()], ids=lambda p: p.stem
)
def test_raw_upstream_bytes_end_to_end(path: Path):
    """Recorded upstream bytes, read 5 bytes at a time → decoder → translator: the golden's events."""
    case = load(STREAMS / f"{path.stem}.json")
    raw = path.read_bytes()
    decoder = SseDecoder()
    sse = [x for i in range(0, len(raw), 5) for x in decoder.feed(raw[i : i + 5])] + decoder.flush()
    chunks = [DONE if e.data == DONE else orjson.loads(e.data) for e in sse]
    assert chunks == case["chunks"]
    assert run({**case, "chunks": chunks})[0] == case["events"]


# ---------------------------------------------------------------------------- behaviour


def _call(**request: Any) -> ChatCall:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, **request}
    return to_chat_request(body, upstream_model="up", dialect=ChatDialect())


def _chunk(delta: dict | None = None, finish: str | None = None, **extra: Any) -> dict:
    return {"id": "c1", "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


def test_two_translators_keep_their_own_state():
    """P36: two concurrent streams, chunks interleaved: each gets only its own blocks, from index 0."""
    a = load(STREAMS / "parallel_interleaved.json")
    b = load(STREAMS / "reasoning_then_text.json")
    ta = ChatStreamTranslator(call_for(a), message_id="msg_test")
    tb = ChatStreamTranslator(call_for(b), message_id="msg_test")
    out: dict[str, list[dict]] = {"a": ta.start(), "b": tb.start()}
    pending = {"a": list(a["chunks"]), "b": list(b["chunks"])}
    turns = ["a"] * len(pending["a"]) + ["b"] * len(pending["b"])
    random.Random(7).shuffle(turns)  # a random interleaving that keeps each stream's own order
    for name in turns:
        t = ta if name == "a" else tb
        chunk = pending[name].pop(0)
        out[name] += t.finish() if chunk == DONE else t.feed(chunk)
    assert out["a"] == a["events"]
    assert out["b"] == b["events"]


def test_state_and_properties():
    t = ChatStreamTranslator(_call(), message_id="msg_x", input_tokens=7)
    assert t.state is State.NOT_STARTED and not t.started and not t.finished
    assert t.usage == {
        "input_tokens": 7,
        "output_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    assert not t.usage_reported and t.stop_reason is None
    t.start()
    assert t.state is State.BETWEEN_BLOCKS and t.started and t.events_emitted == 1
    t.feed(_chunk({"content": "hi"}))
    assert t.state is State.OPEN and t.open_block is BlockKind.TEXT and t.events_emitted == 3
    t.feed(_chunk({}, "stop", usage={"prompt_tokens": 3, "completion_tokens": 1}))
    assert t.finish_reason == "stop" and t.usage_reported and t.usage["input_tokens"] == 3
    assert t.stop_reason is None  # decided by finish()
    end = t.finish()
    assert [e["type"] for e in end] == ["content_block_stop", "message_delta", "message_stop"]
    assert t.state is State.FINISHED and t.finished and t.stop_reason == "end_turn" and t.events_emitted == 6


def test_message_start_uses_the_requested_model_and_estimate():
    t = ChatStreamTranslator(_call(), input_tokens=12)
    (start,) = t.start()
    message = start["message"]
    assert message["model"] == "m" and message["id"].startswith("msg_")
    assert message["usage"] == {
        "input_tokens": 12,
        "output_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    assert t.start() == []  # once


def test_feed_before_start_sends_message_start_first():
    t = ChatStreamTranslator(_call(), message_id="msg_x")
    events = t.feed(_chunk({"content": "a"}))
    assert [e["type"] for e in events] == ["message_start", "content_block_start", "content_block_delta"]


def test_nothing_after_finish_or_fail():
    t = ChatStreamTranslator(_call(), message_id="msg_x")
    t.start()
    t.feed(_chunk({"content": "a"}, "stop"))
    assert t.finish()
    assert t.feed(_chunk({"content": "late"})) == [] and t.finish() == [] and t.fail(Overloaded("x")) == []

    t = ChatStreamTranslator(_call(), message_id="msg_x")
    t.start()
    t.feed(_chunk({"content": "a"}))
    assert t.fail(Overloaded("busy")) == [{"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}]
    assert t.fail(Overloaded("again")) == [] and t.finish() == [] and t.feed(_chunk({"content": "b"})) == []
    assert t.stop_reason is None


def test_fail_with_a_foreign_exception_is_api_error():
    t = ChatStreamTranslator(_call(), message_id="msg_x")
    t.start()
    (event,) = t.fail(ConnectionResetError("peer reset, secret details"))
    assert event["error"]["type"] == "api_error" and "secret" not in event["error"]["message"]


def test_fail_before_start_is_only_the_error():
    t = ChatStreamTranslator(_call(), message_id="msg_x")
    assert t.fail(GatewayError("boom")) == [{"type": "error", "error": {"type": "api_error", "message": "boom"}}]
    assert not t.started and t.finished


def test_finish_that_raises_changes_nothing():
    t = ChatStreamTranslator(_call(), message_id="msg_x")
    t.start()
    t.feed(_chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"arguments": "{}"}}]}, "tool_calls"))
    emitted = t.events_emitted
    with pytest.raises(UpstreamProtocolError):
        t.finish()
    assert t.events_emitted == emitted and not t.finished
    assert t.fail(UpstreamProtocolError("x"))[0]["type"] == "error"


@pytest.mark.parametrize(
    "chunk",
    [
        "not a dict",
        ["a", "list"],
        {"choices": {"index": 0}},
        {"choices": ["x"]},
        {"choices": [{"index": 0, "delta": "text"}]},
        {"choices": [{"index": 0, "delta": {"content": 5}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": {"index": 0}}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": ["x"]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": 5}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": 3}]},
    ],
)
def test_malformed_chunks_raise(chunk: Any):
    t = ChatStreamTranslator(_call(), message_id="msg_x")
    t.start()
    with pytest.raises(UpstreamProtocolError):
        t.feed(chunk)


def test_error_chunk_shapes():
    t = ChatStreamTranslator(_call(), message_id="msg_x")
    t.start()
    with pytest.raises(Overloaded, match="Server is overloaded"):
        t.feed({"error": {"message": "Server is overloaded, try later", "type": "invalid_request_error"}})
    t = ChatStreamTranslator(_call(), message_id="msg_x")
    with pytest.raises(GatewayError) as info:
        t.feed({"error": "plain string failure"})
    assert info.value.error_type == "api_error" and info.value.message == "plain string failure"
    t = ChatStreamTranslator(_call(), message_id="msg_x")
    with pytest.raises(GatewayError) as info:  # vLLM's error object shape
        t.feed({"object": "error", "message": "bad things", "type": "BadRequestError", "code": 400})
    assert info.value.message == "bad things"


def test_arguments_for_a_closed_tool_call_raise():
    t = ChatStreamTranslator(_call(), message_id="msg_x")
    t.start()
    t.feed(_chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x":'}}]}))
    t.feed(_chunk({"content": "interjection"}))  # text closes the tool block
    t.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "   "}}]}))  # whitespace: harmless
    with pytest.raises(UpstreamProtocolError):
        t.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}))


def test_a_tool_call_that_changes_its_name_raises():
    t = ChatStreamTranslator(_call(), message_id="msg_x")
    t.start()
    t.feed(_chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f"}}]}))
    t.feed(_chunk({"tool_calls": [{"index": 0, "function": {"name": "f"}}]}))  # repeated: fine
    with pytest.raises(UpstreamProtocolError):
        t.feed(_chunk({"tool_calls": [{"index": 0, "function": {"name": "g"}}]}))


def test_empty_tool_call_entries_open_nothing():
    t = ChatStreamTranslator(_call(), message_id="msg_x")
    t.start()
    assert t.feed(_chunk({"tool_calls": [{"index": 3}, {"index": 4, "function": {"arguments": ""}}]}, "stop")) == []
    assert [e["type"] for e in t.finish()] == ["message_delta", "message_stop"]


def test_openrouter_reasoning_details_signature():
    t = ChatStreamTranslator(_call(), message_id="msg_x")
    events = t.start()
    events += t.feed(
        _chunk(
            {
                "reasoning": "Think",
                "reasoning_details": [{"type": "reasoning.text", "text": "Think", "format": "anthropic-claude-v1"}],
            }
        )
    )
    events += t.feed(
        _chunk({"reasoning": "", "reasoning_details": [{"type": "reasoning.text", "text": "", "signature": "sig1"}]})
    )
    events += t.feed(_chunk({"content": "Out"}, "stop"))
    events += t.finish()
    assert events[1:5] == [
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Think"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig1"}},
        {"type": "content_block_stop", "index": 0},
    ]
    check_stream(events)


def test_reasoning_details_text_alone_is_thinking():
    t = ChatStreamTranslator(_call(), message_id="msg_x")
    t.start()
    events = t.feed(
        _chunk(
            {
                "reasoning_details": [
                    {"type": "reasoning.text", "text": "only here"},
                    {"type": "reasoning.encrypted", "data": "xx"},
                ]
            }
        )
    )
    assert events[-1]["delta"] == {"type": "thinking_delta", "thinking": "only here"}


def test_content_parts_list():
    t = ChatStreamTranslator(_call(), message_id="msg_x")
    t.start()
    events = t.feed(
        _chunk({"content": [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]})
    )
    assert events[-1]["delta"] == {"type": "text_delta", "text": "ab"}


def test_tool_call_without_index_continues_the_last_call():
    t = ChatStreamTranslator(_call(), message_id="msg_x")
    events = t.start()
    events += t.feed(_chunk({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": '{"x"'}}]}))
    events += t.feed(_chunk({"tool_calls": [{"function": {"arguments": ":1}"}}]}, "tool_calls"))
    events += t.finish()
    assert MessageFold.of(events, strict=True).message["content"] == [
        {"type": "tool_use", "id": "a", "name": "f", "input": {"x": 1}}
    ]


# ---------------------------------------------------------------------------- property


@st.composite
def _tool_streams(draw) -> tuple[list[dict], list[tuple[str, dict]], str]:
    """Chunks for 1–4 tool calls whose fragments interleave at random (each call's own
    fragments in order), optionally after text; the name comes late for some calls."""
    text = draw(st.text(max_size=8))
    n = draw(st.integers(min_value=1, max_value=4))
    same_index = draw(st.booleans()) and n > 1
    calls = []
    for k in range(n):
        args = draw(
            st.dictionaries(
                st.sampled_from("abc"), st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=5)), max_size=3
            )
        )
        raw = orjson.dumps(args).decode()
        cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(raw)), max_size=4)))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        late_name = draw(st.booleans()) and not same_index
        frags = []
        for j, piece in enumerate(pieces):
            frag: dict[str, Any] = {"index": 0 if same_index else k, "function": {"arguments": piece}}
            if j == 0:
                frag["id"] = f"call_{k}"
                if not late_name:
                    frag["function"]["name"] = f"tool_{k}"
            if j == (1 if len(pieces) > 1 else 0) and late_name:
                frag["function"]["name"] = f"tool_{k}"
            frags.append(frag)
        calls.append((f"tool_{k}", args, frags))
    # interleave: pick which call's next fragment goes out; same-index servers cannot interleave
    queues = [list(frags) for _, _, frags in calls]
    chunks = [_chunk({"content": text})] if text else []
    if same_index:
        order = [k for k in range(n) for _ in queues[k]]
    else:
        order = draw(st.permutations([k for k in range(n) for _ in queues[k]]))
    seen: list[int] = []
    for k in order:
        chunks.append(_chunk({"tool_calls": [queues[k].pop(0)]}))
        if k not in seen:
            seen.append(k)
    chunks.append(
        _chunk({}, draw(st.sampled_from(["tool_calls", "stop"])), usage={"prompt_tokens": 5, "completion_tokens": 9})
    )
    expected = [(calls[k][0], calls[k][1]) for k in seen]
    return chunks, expected, text


@settings(max_examples=200, deadline=None)
@given(stream=_tool_streams())
def test_any_interleaving_of_tool_calls(stream):
    chunks, expected, text = stream
    t = ChatStreamTranslator(_call(), message_id="msg_x")
    events = t.start()
    for chunk in chunks:
        events += t.feed(chunk)
    events += t.finish()
    check_stream(events)
    content = MessageFold.of(events, strict=True).message["content"]
    tools = [(b["name"], b["input"]) for b in content if b["type"] == "tool_use"]
    assert tools == expected  # every call, in first-seen order, arguments intact
    assert [b["text"] for b in content if b["type"] == "text"] == ([text] if text else [])
    assert t.stop_reason == "tool_use"


# ---------------------------------------------------------------------------- where a call's arguments end


def _whole_value(text: str) -> bool:
    """The definition: one JSON object or array, nothing but whitespace around it."""
    try:
        return isinstance(orjson.loads(text), (dict, list))
    except orjson.JSONDecodeError:
        return False


# Values whose strings hold what could mislead a scan: quotes, backslashes, brackets.
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(alphabet='ab"\\{}[] \n', max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='k"\\[{', max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def _argument_fragments(draw) -> list[str]:
    """A JSON value's text, maybe with something before or after it, cut anywhere."""
    text = draw(st.sampled_from(["", " ", "x", "]", "\x0c"])) + orjson.dumps(draw(_JSON_VALUES)).decode()
    text += draw(st.sampled_from(["", " \n", "x", "}", "{}", "\x0c", '"']))
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(text)), max_size=8)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@settings(max_examples=400, deadline=None)
@given(fragments=_argument_fragments())
def test_the_end_of_the_arguments_is_found_fragment_by_fragment(fragments):
    end = chat_stream._ValueEnd()
    for i in range(1, len(fragments) + 1):
        assert end.whole(fragments[:i]) == _whole_value("".join(fragments[:i])), fragments[:i]


def test_arguments_are_parsed_once_while_another_call_waits(monkeypatch):
    """Regression: while a call was open and another waited, every fragment of the open one
    joined and parsed all its fragments so far (8,000 fragments ending in `}` took 0.7 s, four
    times as many 16 times as long). They are now read once, and parsed when they close."""
    parsed: list[str] = []
    parses = chat_stream._parses
    monkeypatch.setattr(chat_stream, "_parses", lambda text: parsed.append(text) or parses(text))
    t = ChatStreamTranslator(_call(), message_id="msg_x")
    events = t.start()
    events += t.feed(
        _chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"k": [{}'}}]})
    )
    events += t.feed(_chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}]}))
    for i in range(5_000):
        events += t.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": f', {{"x": {i}}}'}}]}))
        events += t.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": " "}}]}))
    events += t.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "]}"}}]}))
    events += t.finish()
    assert len(parsed) == 1
    check_stream(events)
    content = MessageFold.of(events, strict=True).message["content"]
    assert [(b["name"], b["input"]) for b in content] == [
        ("f", {"k": [{}, *({"x": i} for i in range(5_000))]}),
        ("g", {}),
    ]


# ---------------------------------------------------------------------------- the grammar checker itself

_S = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 0},
    },
}
_TEXT0 = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
_TOOL0 = {
    "type": "content_block_start",
    "index": 0,
    "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}},
}
_D0 = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}}
_STOP0 = {"type": "content_block_stop", "index": 0}
_MD = {
    "type": "message_delta",
    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
    "usage": {"output_tokens": 1},
}
_END = {"type": "message_stop"}
_ERR = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}


def test_grammar_accepts_pings_and_errors():
    ping = {"type": "ping"}
    check_stream([_S, ping, _TEXT0, ping, _D0, _STOP0, ping, _MD, ping, _END])
    check_stream([_S, _TEXT0, _D0, _ERR])
    check_stream([_ERR])


@pytest.mark.parametrize(
    "events",
    [
        [_TEXT0, _D0, _STOP0, _MD, _END],  # no message_start
        [_S, _D0, _TEXT0, _STOP0, _MD, _END],  # delta before its block starts
        [_S, {**_TEXT0, "index": 1}, {**_D0, "index": 1}, {**_STOP0, "index": 1}, _MD, _END],  # indexes from 1
        [_S, _TEXT0, _D0, _MD, _END],  # block never stopped
        [_S, _TEXT0, _D0, _STOP0, _MD],  # no message_stop
        [_S, _TEXT0, _D0, _STOP0, _END],  # no message_delta
        [_S, _TEXT0, _STOP0, {**_MD, "usage": {}}, _END],  # message_delta without output_tokens
        [_S, _S, _MD, _END],  # second message_start
        [_S, _TOOL0, _D0, _STOP0, _MD, _END],  # text_delta inside a tool block
        [_S, _TEXT0, _STOP0, _D0, _MD, _END],  # delta after the block's stop
        [_S, _TEXT0, {**_TEXT0, "index": 1}, _MD, _END],  # two blocks open
        [_S, _TEXT0, _D0, _ERR, _STOP0],  # something after the error
        [_S, _MD, _END, _ERR],  # something after message_stop
        [_S, {**_MD, "delta": {"stop_reason": "error", "stop_sequence": None}}, _END],  # invented stop reason (P14)
        [
            _S,
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": "t", "name": "", "input": {}},
            },
        ],
        [
            _S,
            _TOOL0,
            {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{"}},
            _STOP0,
            _MD,
            _END,
        ],
        [_S, {"type": "unknown_event"}, _MD, _END],
    ],
)
def test_grammar_rejects(events: list[dict]):
    with pytest.raises(AssertionError):
        check_stream(events)


# ---------------------------------------------------------------------------- the real client


@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.stem)
def test_the_anthropic_sdk_reads_every_golden(path: Path):
    """The official Python SDK's `messages.stream` over the encoded golden: it raises on what breaks its fold."""
    anthropic = pytest.importorskip("anthropic")
    httpx = pytest.importorskip("httpx2")  # the SDK's HTTP client

    case = load(path)
    wire = b"".join(encode_json(e) for e in case["events"])
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=wire)
    )
    client = anthropic.Anthropic(
        api_key="k", base_url="http://gateway.test", http_client=httpx.Client(transport=transport), max_retries=0
    )
    request = {k: v for k, v in case["request"].items() if k != "stream"}
    if "error" in case:
        with pytest.raises(anthropic.APIStatusError) as info:
            with client.messages.stream(**request) as stream:
                stream.get_final_message()
        assert info.value.status_code == 200 and info.value.type == case["error"]["type"]
        return
    with client.messages.stream(**request) as stream:
        final = stream.get_final_message()
    expected = MessageFold.of(case["events"], strict=True).message
    assert final.stop_reason == expected["stop_reason"] and final.stop_sequence == expected["stop_sequence"]
    assert [b.to_dict() for b in final.content] == expected["content"]
    assert final.usage.output_tokens == expected["usage"]["output_tokens"]
    assert final.usage.input_tokens == expected["usage"]["input_tokens"]
