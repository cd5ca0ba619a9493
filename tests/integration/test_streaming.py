"""Streaming through the real app: the SDK's stream helpers as the client, a scripted upstream
over HTTP, and the faults a stream meets in production (reset, stall, garbage, error
events, a client that leaves)."""

from __future__ import annotations

import asyncio

import aiohttp
import anthropic
import orjson
import pytest

from gateway.protocols.sse import SseDecoder
from tests.support.grammar import check_stream
from tests.support.replies import chat_chunks, chat_message, error, tool_call
from tests.support.servers import CLIENT_HEADERS

ASK = {"max_tokens": 200, "messages": [{"role": "user", "content": "hello"}]}
USAGE = {
    "prompt_tokens": 30,
    "completion_tokens": 9,
    "total_tokens": 39,
    "prompt_tokens_details": {"cached_tokens": 10},
}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def raw_stream(url: str, body: dict) -> tuple[aiohttp.ClientResponse, list[dict], bytes]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/messages", json={**body, "stream": True}, headers=CLIENT_HEADERS) as response:
            raw = await response.read()
    decoder = SseDecoder()
    events = [orjson.loads(e.data) for e in decoder.feed(raw) + decoder.flush()]
    return response, events, raw


async def stream_and_create(client, upstream, *, stream_reply: dict, json_reply: dict, **request):
    """The SDK's final streamed message and the non-streamed message for the same script."""
    upstream.script(stream_reply)
    async with client.messages.stream(**request) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        streamed = await stream.get_final_message()
    upstream.script(json_reply)
    created = await client.messages.create(**request)
    return text, streamed, created


def comparable(message) -> dict:
    data = message.model_dump()
    data.pop("id")
    return data


async def test_text_stream_equals_the_unstreamed_answer(client, upstream):
    text, streamed, created = await stream_and_create(
        client,
        upstream,
        stream_reply={
            "sse": chat_chunks({"content": "Hello"}, {"content": ", wor"}, {"content": "ld 🌍"}, usage=USAGE)
        },
        json_reply=chat_message("Hello, world 🌍", usage=USAGE),
        model="chat-model",
        **ASK,
    )
    assert text == "Hello, world 🌍"
    assert comparable(streamed) == comparable(created)
    assert streamed.usage.input_tokens == 20 and streamed.usage.cache_read_input_tokens == 10
    assert streamed.usage.output_tokens == 9 and streamed.stop_reason == "end_turn"
    sent = upstream.requests[0].body
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_thinking_stream_equals_the_unstreamed_answer(client, upstream):
    _, streamed, created = await stream_and_create(
        client,
        upstream,
        stream_reply={
            "sse": chat_chunks(
                {"reasoning_content": "Six times "}, {"reasoning_content": "seven."}, {"content": "42"}, usage=USAGE
            )
        },
        json_reply=chat_message("42", reasoning="Six times seven.", usage=USAGE),
        model="chat-model",
        **ASK,
    )
    assert [block.type for block in streamed.content] == ["thinking", "text"]
    assert streamed.content[0].thinking == "Six times seven."
    assert comparable(streamed) == comparable(created)


async def test_parallel_tool_calls_stream_equals_the_unstreamed_answer(client, upstream):
    deltas = [
        {"content": "Checking both."},
        {
            "tool_calls": [
                {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]
        },
        {
            "tool_calls": [
                {"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": '{"city": "Rome"}'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]},
    ]
    _, streamed, created = await stream_and_create(
        client,
        upstream,
        stream_reply={"sse": chat_chunks(*deltas, finish_reason="tool_calls", usage=USAGE)},
        json_reply=chat_message(
            "Checking both.",
            tool_calls=[
                tool_call("call_a", "get_weather", '{"city": "Oslo"}'),
                tool_call("call_b", "get_weather", '{"city": "Rome"}'),
            ],
            finish_reason="tool_calls",
            usage=USAGE,
        ),
        model="chat-model",
        tools=[WEATHER_TOOL],
        **ASK,
    )
    assert [(b.type, getattr(b, "input", None)) for b in streamed.content] == [
        ("text", None),
        ("tool_use", {"city": "Oslo"}),
        ("tool_use", {"city": "Rome"}),
    ]
    assert streamed.stop_reason == "tool_use"
    assert comparable(streamed) == comparable(created)


async def test_stop_sequence_in_a_stream(client, upstream):
    upstream.script({"sse": chat_chunks({"content": "one two"}, stop_reason="END")})
    async with client.messages.stream(model="chat-model", stop_sequences=["END"], **ASK) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "END"


async def test_grammar_headers_and_no_done(gateway, upstream):
    upstream.script({"sse": chat_chunks({"content": "a"}, {"content": "b"})})
    response, events, raw = await raw_stream(gateway.url, {"model": "chat-model", **ASK})
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["request-id"].startswith("req_")
    check_stream(events)
    assert b"[DONE]" not in raw
    for block in raw.strip().split(b"\n\n"):  # every event carries its `event:` line
        name, data = block.split(b"\n")
        assert name == b"event: " + orjson.loads(data[len(b"data: ") :])["type"].encode()
    start = events[0]["message"]
    assert start["model"] == "chat-model" and start["content"] == [] and start["stop_reason"] is None
    assert isinstance(start["usage"]["input_tokens"], int) and start["usage"]["output_tokens"] == 0


async def test_usage_never_sent_still_reports_usage(gateway, upstream):
    items = [c for c in chat_chunks({"content": "hi"}) if not (isinstance(c, dict) and "usage" in c)]
    upstream.script({"sse": items})
    _, events, _ = await raw_stream(gateway.url, {"model": "chat-model", **ASK})
    check_stream(events)
    delta = next(e for e in events if e["type"] == "message_delta")
    assert isinstance(delta["usage"]["output_tokens"], int)


async def test_pings_while_the_upstream_is_silent(gateway, upstream):
    # ping_interval is 0.2 s in the test config; the upstream waits 0.7 s between chunks.
    upstream.script({"sse": chat_chunks({"content": "slow"}, {"content": " answer"}), "chunk_delay": 0.7})
    _, events, _ = await raw_stream(gateway.url, {"model": "chat-model", **ASK})
    check_stream(events)
    assert sum(e["type"] == "ping" for e in events) >= 2


async def test_chunks_are_written_as_they_arrive(gateway, upstream):
    # The upstream sends the role chunk and one text chunk, then hangs: the client must
    # already hold the text, so the gateway did not wait for the end of the answer.
    upstream.script({"sse": chat_chunks({"content": "early"}), "stall_after": 2})
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gateway.url}/v1/messages", json={"model": "chat-model", "stream": True, **ASK}, headers=CLIENT_HEADERS
        ) as response:
            seen = b""
            while b"early" not in seen:
                seen += await asyncio.wait_for(response.content.readany(), 5)
    assert upstream.completed_streams == 0


async def test_native_stream_relayed_with_model_set_back(gateway, upstream):
    upstream.script({"sse": native_message_stream()})
    response, events, raw = await raw_stream(gateway.url, {"model": "native-model", **ASK})
    check_stream(events)
    assert events[0]["message"]["model"] == "native-model"
    # Everything after message_start is the upstream's bytes, untouched.
    tail = b"".join(encode_native(item) for item in native_message_stream()[1:])
    assert raw.endswith(tail)
    sent = upstream.requests[-1]
    assert sent.body["model"] == "upstream-native-model" and sent.body["stream"] is True


async def test_native_stream_with_the_sdk(client, upstream):
    upstream.script({"sse": native_message_stream()})
    async with client.messages.stream(model="native-model", **ASK) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hi there" and final.model == "native-model"
    assert final.usage.input_tokens == 25 and final.usage.output_tokens == 6


@pytest.mark.parametrize("route", ["chat-model", "native-model"])
async def test_upstream_error_before_the_stream_is_a_normal_error(client, upstream, route):
    upstream.script(error(503, "busy"))
    with pytest.raises(anthropic.OverloadedError) as caught:
        async with client.messages.stream(model=route, **ASK) as stream:
            await stream.get_final_message()
    assert caught.value.status_code == 529


@pytest.mark.parametrize(
    ("script", "error_type"),
    [
        ({"sse": chat_chunks({"content": "partial"}), "reset_after": 3}, "api_error"),
        ({"sse": chat_chunks({"content": "partial"}), "stall_after": 3}, "timeout_error"),
        ({"sse": chat_chunks({"content": "partial"})[:3] + ["data: {this is not json\n\n"]}, "api_error"),
        (
            {
                "sse": chat_chunks({"content": "partial"})[:3]
                + [{"error": {"message": "overloaded", "type": "server_error"}}]
            },
            "overloaded_error",
        ),
        ({"sse": chat_chunks({"content": "partial"})[:2]}, "api_error"),  # EOF without finish or [DONE]
    ],
    ids=["reset", "stall", "garbage", "error-chunk", "ended-early"],
)
async def test_failure_mid_stream_is_an_error_event(gateway, client, upstream, script, error_type):
    upstream.script(script)
    _, events, raw = await raw_stream(gateway.url, {"model": "chat-model", **ASK})
    check_stream(events)
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == error_type
    assert not any(e["type"] in ("message_delta", "message_stop") for e in events)
    assert raw.endswith(b"\n\n")  # never half an event

    # The SDK raises rather than handing back a silently truncated message.
    upstream.script(script)
    with pytest.raises(anthropic.APIStatusError):
        async with client.messages.stream(model="chat-model", **ASK) as stream:
            await stream.get_final_message()


async def test_native_failure_mid_stream_is_an_error_event(gateway, upstream):
    upstream.script({"sse": native_message_stream(), "reset_after": 4})
    _, events, raw = await raw_stream(gateway.url, {"model": "native-model", **ASK})
    check_stream(events)
    assert events[-1]["type"] == "error"
    assert raw.endswith(b"\n\n")


def native_message_stream() -> list[dict]:
    message = {
        "id": "msg_native1",
        "type": "message",
        "role": "assistant",
        "model": "upstream-native-model",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 1},
    }
    events = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 6},
        },
        {"type": "message_stop"},
    ]
    return [{"event": e["type"], "data": e} for e in events]


TWO_TEXTS = chat_chunks({"content": "Hello"}, {"content": " world"})[:3]


@pytest.mark.parametrize("one_write", [True, False], ids=["one-write", "item-by-item"])
@pytest.mark.parametrize(
    ("bad", "error_type"),
    [
        ("data: {this is not json\n\n", "api_error"),
        ({"error": {"message": "overloaded", "type": "server_error"}}, "overloaded_error"),
    ],
    ids=["garbage", "error-chunk"],
)
async def test_text_before_a_mid_stream_failure_reaches_the_client(
    gateway, client, upstream, bad, error_type, one_write
):
    """`role`, two text chunks, then a failure, all in one write over a real socket (the
    gateway reads them at once) or item by item: the client gets both deltas, then the
    error. The same bytes split at every boundary are in tests/unit/test_relay_failures.py."""
    upstream.script({"sse": [*TWO_TEXTS, bad], "one_write": one_write})
    _, events, _ = await raw_stream(gateway.url, {"model": "chat-model", **ASK})
    check_stream(events)
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "error",
    ]
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == "Hello world"
    assert events[-1]["error"]["type"] == error_type

    upstream.script({"sse": [*TWO_TEXTS, bad], "one_write": one_write})
    seen = []
    with pytest.raises(anthropic.APIStatusError):
        async with client.messages.stream(model="chat-model", **ASK) as stream:
            async for text in stream.text_stream:
                seen.append(text)
    assert "".join(seen) == "Hello world"  # what the SDK showed before it raised


async def test_native_text_before_a_mid_stream_failure_reaches_the_client(gateway, upstream):
    items = native_message_stream()[:5] + ["event: message_delta\ndata: {broken\n\n"]
    upstream.script({"sse": items, "one_write": True})
    _, events, _ = await raw_stream(gateway.url, {"model": "native-model", **ASK})
    check_stream(events)
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "error",
    ]
    assert events[0]["message"]["model"] == "native-model"


@pytest.mark.parametrize(
    ("model", "items"),
    [
        ("native-model", native_message_stream()[:-1] + ['event: message_stop\ndata: {"type":"message_stop"}\n']),
        ("native-model", native_message_stream()[:-1] + ['event: message_stop\ndata: {"type":"message_stop"}']),
        ("chat-model", chat_chunks({"content": "Hi there"}, done=False) + ["data: [DONE]\n"]),
    ],
    ids=["native-lf", "native-bare", "chat-done"],
)
async def test_a_last_event_without_its_blank_line_completes_the_stream(gateway, client, upstream, model, items):
    """The official SDK reads these bytes as a complete message; so does the gateway."""
    upstream.script({"sse": items})
    _, events, raw = await raw_stream(gateway.url, {"model": model, **ASK})
    check_stream(events)
    assert events[-1]["type"] == "message_stop" and raw.endswith(b"\n\n")
    upstream.script({"sse": items})
    async with client.messages.stream(model=model, **ASK) as stream:
        assert (await stream.get_final_message()).content[0].text == "Hi there"


async def test_client_disconnect_cancels_the_upstream(gateway, upstream):
    upstream.script({"sse": chat_chunks({"content": "never finished"}), "stall_after": 2})
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gateway.url}/v1/messages", json={"model": "chat-model", "stream": True, **ASK}, headers=CLIENT_HEADERS
        ) as response:
            assert b"message_start" in await asyncio.wait_for(response.content.readany(), 5)
            response.close()  # the client leaves mid-stream
    for _ in range(100):
        if upstream.disconnects:
            break
        await asyncio.sleep(0.02)
    assert upstream.disconnects == 1 and upstream.completed_streams == 0


async def test_stream_options_refused_then_remembered(client, upstream):
    upstream.script(
        error(400, "Unrecognized request argument supplied: stream_options"), {"sse": chat_chunks({"content": "ok"})}
    )
    async with client.messages.stream(model="chat-model", **ASK) as stream:
        assert (await stream.get_final_message()).content[0].text == "ok"
    assert "stream_options" in upstream.requests[0].body
    assert "stream_options" not in upstream.requests[1].body
    upstream.script({"sse": chat_chunks({"content": "again"})})
    async with client.messages.stream(model="chat-model", **ASK) as stream:
        await stream.get_final_message()
    assert "stream_options" not in upstream.requests[2].body


def encode_native(item: dict) -> bytes:
    return b"event: " + item["event"].encode() + b"\ndata: " + orjson.dumps(item["data"]) + b"\n\n"
