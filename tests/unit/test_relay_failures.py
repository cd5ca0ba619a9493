"""A stream that fails midway: everything the upstream made before the failure reaches the
client, in order, then one `error` event, and nothing after it; for every split of the
upstream's bytes into reads (each byte boundary, two cuts, and all of it in one read).

The bug this guards: an OpenAI-style upstream sent `role`, two text chunks and then a line
that was not JSON (or a `data: {"error": …}` chunk). When the good chunks and the bad
one arrived in the same read, the client got `message_start` then `error`: the two text
deltas were dropped with the read that held them. With separate reads they survived.

Also here: a last event that lacks only its closing blank line is an event at end of
input (as the official SDKs read it), and one cut short is an early end.
"""

from __future__ import annotations

from typing import TypeVar

import orjson
import pytest

from gateway.backends.presets import ChatDialect
from gateway.protocols.sse import SseDecoder
from gateway.translate.messages_chat.relay import ChatRelay
from gateway.translate.messages_chat.request import to_chat_request
from gateway.translate.messages_native.relay import NativeRelay
from tests.support.grammar import check_stream

R = TypeVar("R", ChatRelay, NativeRelay)

CALL = to_chat_request(
    {
        "model": "m",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
    },
    upstream_model="up",
    dialect=ChatDialect(),
)


def splits(data: bytes):
    """Every way to cut `data` once, a sample of two cuts, and not at all."""
    yield [data]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]
    step = max(1, len(data) // 17)
    for i in range(1, len(data), step):
        for j in range(i + 1, len(data), step):
            yield [data[:i], data[i:j], data[j:]]


def events(raw: bytes) -> list[dict]:
    decoder = SseDecoder()
    return [orjson.loads(e.data) for e in decoder.feed(raw) + decoder.flush()]


def relay_all(relay: R, pieces: list[bytes]) -> tuple[list[dict], R]:
    """What the client gets when the pump hands `relay` these reads, then the end."""
    out = [relay.start()]
    for piece in pieces:
        if relay.finished:  # the pump stops reading
            break
        out.append(relay.feed(piece))
    out.append(relay.end())
    return events(b"".join(out)), relay


def run_chat(pieces: list[bytes]) -> tuple[list[dict], ChatRelay]:
    return relay_all(ChatRelay(CALL, input_tokens=3), pieces)


def run_native(pieces: list[bytes]) -> tuple[list[dict], NativeRelay]:
    return relay_all(NativeRelay("client-model"), pieces)


def data(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chunk(delta: dict) -> dict:
    return {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}


GOOD_CHAT = data(chunk({"role": "assistant"})) + data(chunk({"content": "Hello"})) + data(chunk({"content": " world"}))
THINK_AND_TOOL = (
    data(chunk({"role": "assistant", "reasoning_content": "hmm"}))
    + data(chunk({"content": "Hi"}))
    + data(chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": '{"a"'}}]}))
    + data(chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1"}}]}))
)


def deltas(stream: list[dict]) -> list[tuple[str, str]]:
    out = []
    for event in stream:
        if event["type"] == "content_block_delta":
            delta = event["delta"]
            out.append((delta["type"], delta.get("text") or delta.get("thinking") or delta.get("partial_json") or ""))
    return out


@pytest.mark.parametrize(
    ("bad", "error_type"),
    [
        (b"data: {not json\n\n", "api_error"),
        (data({"error": {"message": "the model is overloaded", "type": "server_error"}}), "overloaded_error"),
        (data({"error": {"message": "boom"}}), "api_error"),
        (data({"choices": "nope"}), "api_error"),
    ],
    ids=["not-json", "error-overloaded", "error", "bad-shape"],
)
def test_chat_text_before_a_failure_reaches_the_client_at_every_split(bad, error_type):
    stream = GOOD_CHAT + bad + data(chunk({"content": "never"})) + b"data: [DONE]\n\n"
    for pieces in splits(stream):
        got, relay = run_chat(pieces)
        check_stream(got)
        types = [e["type"] for e in got]
        assert types == [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "error",
        ], pieces
        assert deltas(got) == [("text_delta", "Hello"), ("text_delta", " world")]
        assert got[-1]["error"]["type"] == error_type
        assert relay.failure is not None and relay.failure.upstream_failure in ("stream_protocol", "stream_error")
        assert relay.has_content


def test_chat_thinking_and_tool_input_before_a_failure_reach_the_client_at_every_split():
    stream = THINK_AND_TOOL + b"data: garbage\n\n"
    for pieces in splits(stream):
        got, _ = run_chat(pieces)
        check_stream(got)
        assert deltas(got) == [
            ("thinking_delta", "hmm"),
            ("text_delta", "Hi"),
            ("input_json_delta", '{"a"'),
            ("input_json_delta", ": 1"),
        ], pieces
        assert [e["content_block"]["type"] for e in got if e["type"] == "content_block_start"] == [
            "thinking",
            "text",
            "tool_use",
        ]
        assert got[-1]["type"] == "error"


def test_a_chat_stream_that_ends_early_keeps_its_text_and_says_so():
    for pieces in splits(GOOD_CHAT):
        got, relay = run_chat(pieces)
        check_stream(got)
        assert deltas(got) == [("text_delta", "Hello"), ("text_delta", " world")] and got[-1]["type"] == "error"
        assert relay.failure is not None and relay.failure.upstream_failure == "stream_reset"


def test_a_chat_done_without_its_blank_line_is_a_whole_stream():
    finish = data({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    for tail in (b"data: [DONE]\n", b"data: [DONE]", b"data: [DONE]\r\n"):
        for pieces in splits(data(chunk({"role": "assistant", "content": "ok"})) + tail):
            got, relay = run_chat(pieces)
            check_stream(got)
            assert got[-1]["type"] == "message_stop" and relay.failure is None, (tail, pieces)
        got, relay = run_chat([GOOD_CHAT + finish + tail])
        assert got[-1]["type"] == "message_stop" and relay.done


# ---------------------------------------------------------------------------- native


def event(name: str, payload: dict | bytes) -> bytes:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return b"event: " + name.encode() + b"\ndata: " + body + b"\n\n"


START = event(
    "message_start",
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "upstream-model",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 1},
        },
    },
)
GOOD_NATIVE = (
    START
    + event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    + event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    )
    + event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " world"}},
    )
)
END_NATIVE = event("content_block_stop", {"type": "content_block_stop", "index": 0}) + event(
    "message_delta",
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 2},
    },
)
STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


@pytest.mark.parametrize(
    ("bad", "error_type", "kind"),
    [
        (event("message_delta", b"{not json"), "api_error", "stream_protocol"),
        (
            event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            "overloaded_error",
            "stream_error",
        ),
        (
            event(
                "error", {"type": "error", "error": {"type": "api_error", "message": "key sk-ant-abcdefghijkl leaked"}}
            ),
            "api_error",
            "stream_error",
        ),
    ],
    ids=["not-json", "overloaded", "scrubbed"],
)
def test_native_text_before_a_failure_reaches_the_client_at_every_split(bad, error_type, kind):
    stream = GOOD_NATIVE + bad + END_NATIVE + STOP
    for pieces in splits(stream):
        got, relay = run_native(pieces)
        check_stream(got)
        assert [e["type"] for e in got] == [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "error",
        ], pieces
        assert got[0]["message"]["model"] == "client-model"
        assert deltas(got) == [("text_delta", "Hello"), ("text_delta", " world")]
        assert got[-1]["error"]["type"] == error_type and "sk-ant-" not in got[-1]["error"]["message"]
        assert relay.failure is not None and relay.failure.upstream_failure == kind


def test_a_native_stream_is_passed_through_byte_for_byte_but_for_its_model_at_every_split():
    stream = GOOD_NATIVE + END_NATIVE + STOP
    whole, _ = run_native([stream])
    for pieces in splits(stream):
        got, relay = run_native(pieces)
        assert got == whole and relay.failure is None and relay.usage == {"input_tokens": 5, "output_tokens": 2}
    check_stream(whole)


def test_nothing_after_a_native_message_stop_reaches_the_client():
    extra = event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "after"}},
    )
    for pieces in splits(GOOD_NATIVE + END_NATIVE + STOP + extra):
        got, _ = run_native(pieces)
        check_stream(got)
        assert got[-1]["type"] == "message_stop" and "after" not in str(got)


@pytest.mark.parametrize(
    "tail",
    [
        b'event: message_stop\ndata: {"type":"message_stop"}\n',
        b'event: message_stop\ndata: {"type":"message_stop"}',
        b'event: message_stop\r\ndata: {"type":"message_stop"}\r\n',
    ],
    ids=["lf", "no-line-end", "crlf"],
)
def test_a_native_message_stop_without_its_blank_line_is_a_whole_stream(tail):
    for pieces in splits(GOOD_NATIVE + END_NATIVE + tail):
        got, relay = run_native(pieces)
        check_stream(got)
        assert got[-1]["type"] == "message_stop" and relay.failure is None, pieces


def test_a_native_stream_cut_inside_its_last_event_is_an_early_end():
    cut = (GOOD_NATIVE + END_NATIVE)[:-30]  # inside the message_delta's JSON
    for pieces in splits(cut):
        got, relay = run_native(pieces)
        check_stream(got)
        assert deltas(got) == [("text_delta", "Hello"), ("text_delta", " world")] and got[-1]["type"] == "error"
        assert relay.failure is not None and relay.failure.upstream_failure == "stream_reset"


def test_a_native_event_in_many_small_reads_costs_its_length_not_its_square():
    """The relay used to join and search its whole held buffer on every read: an event that
    arrived a byte at a time cost the square of its length."""
    big = event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x" * 200_000}},
    )
    relay = NativeRelay("m")
    relay.feed(START)
    out = [relay.feed(big[i : i + 1]) for i in range(len(big))]
    assert b"".join(out) == big
    assert relay._held == [] and len(relay._tail) <= 3


# ---------------------------------------------------------------------------- caps

CAP = 512  # bytes of one line or event; every good event above is shorter
PAST_THE_CAP = [
    b"data: " + b"x" * 1000,  # a line that never ends
    b"data: " + b"x" * 1000 + b"\n\n",  # a whole line past the cap
    b"data: x\n" * 100,  # an event that never ends: its lines add up past the cap
]
PAST_THE_CAP_IDS = ["endless-line", "long-line", "endless-event"]


def test_streams_within_the_cap_are_untouched():
    assert max(len(e) for e in (GOOD_CHAT + GOOD_NATIVE + END_NATIVE).split(b"\n\n")) < CAP
    got, relay = relay_all(ChatRelay(CALL, input_tokens=3, max_event=CAP), [GOOD_CHAT + b"data: [DONE]\n\n"])
    assert got[-1]["type"] == "message_stop" and relay.failure is None
    got, relay = relay_all(NativeRelay("m", max_event=CAP), [GOOD_NATIVE + END_NATIVE + STOP])
    assert got[-1]["type"] == "message_stop" and relay.failure is None


@pytest.mark.parametrize("bad", PAST_THE_CAP, ids=PAST_THE_CAP_IDS)
def test_chat_text_before_a_line_or_event_past_the_cap_reaches_the_client_at_every_split(bad):
    for pieces in splits(GOOD_CHAT + bad):
        got, relay = relay_all(ChatRelay(CALL, input_tokens=3, max_event=CAP), pieces)
        check_stream(got)
        assert [e["type"] for e in got] == [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "error",
        ], pieces
        assert deltas(got) == [("text_delta", "Hello"), ("text_delta", " world")]
        assert got[-1]["error"] == {
            "type": "api_error",
            "message": f"the model's backend sent a stream line or event longer than {CAP} bytes",
        }
        assert relay.failure is not None and relay.failure.upstream_failure == "stream_protocol"


@pytest.mark.parametrize("bad", PAST_THE_CAP, ids=PAST_THE_CAP_IDS)
def test_native_text_before_a_line_or_event_past_the_cap_reaches_the_client_at_every_split(bad):
    for pieces in splits(GOOD_NATIVE + bad):
        got, relay = relay_all(NativeRelay("client-model", max_event=CAP), pieces)
        check_stream(got)
        assert [e["type"] for e in got] == [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "error",
        ], pieces
        assert got[0]["message"]["model"] == "client-model"
        assert got[-1]["error"]["message"] == f"the model's backend sent a stream line or event longer than {CAP} bytes"
        assert relay.failure is not None and relay.failure.upstream_failure == "stream_protocol"


def test_a_native_event_that_never_ends_is_let_go_once_past_the_cap():
    relay = NativeRelay("m", max_event=CAP)
    relay.feed(START)
    outs = [relay.feed(b"data: x\n") for _ in range(2 * CAP // 8)]
    refused = next(i for i, out in enumerate(outs) if out)
    assert refused == CAP // 8  # the read that passed the cap, and nothing after it
    assert outs[refused].startswith(b"event: error\n") and not any(outs[refused + 1 :])
    assert relay.finished and relay._held == []
