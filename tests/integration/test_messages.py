"""Non-streaming `POST /v1/messages` through the real app, over HTTP, to a scripted upstream,
with the official `anthropic` SDK as the client."""

from __future__ import annotations

import aiohttp
import anthropic
import pytest

from tests.support.replies import chat_chunks, chat_message, error, native_message, tool_call
from tests.support.servers import CLIENT_HEADERS, gateway_config, start_gateway

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def test_text_answer_from_chat_backend(client, upstream):
    upstream.script(chat_message("Hi there!", usage={"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}))
    message = await client.messages.create(
        model="chat-model",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
        stop_sequences=["END"],
        metadata={"user_id": "u-1"},
        # SDK 2.x no longer has sampling parameters; the served API still takes them.
        extra_body={"temperature": 0.3, "top_k": 20},
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == "chat-model"  # the name the client asked for, not the upstream's
    assert [block.model_dump() for block in message.content] == [
        {"type": "text", "text": "Hi there!", "citations": None}
    ]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens == 12 and message.usage.output_tokens == 3

    sent = upstream.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == "Bearer upstream-chat-key"  # the backend's key, never the client's
    assert "client-key" not in str(sent.headers)
    body = sent.body
    assert body["model"] == "upstream-chat-model"
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert body["max_tokens"] == 64 and body["temperature"] == 0.3 and body["top_k"] == 20
    assert body["stop"] == ["END"]
    assert "stream" not in body and "n" not in body


async def test_alias_routes_to_the_same_model(client, upstream):
    upstream.script(chat_message("ok"))
    message = await client.messages.create(
        model="chat-alias", max_tokens=5, messages=[{"role": "user", "content": "x"}]
    )
    assert message.model == "chat-alias"
    assert upstream.requests[-1].body["model"] == "upstream-chat-model"


async def test_openai_preset_dialect_and_max_tokens_clamp(client, upstream):
    upstream.script(chat_message("ok"))
    await client.messages.create(
        model="openai-model", max_tokens=20000, messages=[{"role": "user", "content": "x"}], extra_body={"top_k": 40}
    )
    body = upstream.requests[-1].body
    assert body["max_completion_tokens"] == 16384  # clamped to the route's max_output_tokens
    assert "max_tokens" not in body and "top_k" not in body
    assert upstream.requests[-1].headers["Authorization"] == "Bearer upstream-openai-key"


async def test_tool_use_round_trip(client, upstream):
    upstream.script(
        chat_message(
            None, tool_calls=[tool_call("call_1", "get_weather", '{"city": "Oslo"}')], finish_reason="tool_calls"
        ),
        chat_message("It is sunny in Oslo."),
    )
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    first = await client.messages.create(model="chat-model", max_tokens=100, tools=[WEATHER_TOOL], messages=messages)
    assert first.stop_reason == "tool_use"
    (use,) = first.content
    assert use.type == "tool_use" and use.id == "call_1" and use.name == "get_weather" and use.input == {"city": "Oslo"}
    assert upstream.requests[-1].body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        }
    ]

    messages += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21C"}]},
    ]
    second = await client.messages.create(model="chat-model", max_tokens=100, tools=[WEATHER_TOOL], messages=messages)
    assert second.content[0].text == "It is sunny in Oslo."
    sent = upstream.requests[-1].body["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
        ],
    }
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"}


async def test_reasoning_becomes_a_thinking_block(client, upstream):
    upstream.script(chat_message("42", reasoning="Let me think: 6*7."))
    message = await client.messages.create(
        model="chat-model", max_tokens=50, messages=[{"role": "user", "content": "6*7?"}]
    )
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Let me think: 6*7." and message.content[0].signature == ""


async def test_stop_sequence_reported(client, upstream):
    upstream.script(chat_message("one two", stop_reason="END"))
    message = await client.messages.create(
        model="chat-model", max_tokens=50, stop_sequences=["END"], messages=[{"role": "user", "content": "count"}]
    )
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "END"


async def test_native_pass_through(gateway, upstream):
    upstream.script(native_message([{"type": "text", "text": "native hello"}]))
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key="client-key", max_retries=0, default_headers={"anthropic-version": "2023-06-01"}
    ) as sdk:
        message = await sdk.beta.messages.create(
            model="native-model",
            max_tokens=64,
            betas=["context-management-2025-06-27"],
            messages=[{"role": "user", "content": "hi"}],
            metadata={"user_id": "u", "request_id": "r"},
            extra_body={"temperature": 1.7, "context_management": {"edits": []}, "service_tier": "auto"},
        )
    assert message.model == "native-model"
    assert message.content[0].text == "native hello"
    assert message.usage.input_tokens == 21 and message.usage.output_tokens == 9
    sent = upstream.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == "upstream-native-key"
    assert "client-key" not in str(sent.headers)
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["anthropic-beta"] == "context-management-2025-06-27"
    body = sent.body
    assert body["model"] == "upstream-native-model"
    assert body["temperature"] == 1.0  # the served API allows 2; Anthropic's stops at 1
    assert body["metadata"] == {"user_id": "u"}
    assert body["context_management"] == {"edits": []} and body["service_tier"] == "auto"


async def test_native_gets_a_default_max_tokens(gateway, upstream):
    upstream.script(native_message([{"type": "text", "text": "ok"}]))
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gateway.url}/v1/messages",
            json={"model": "native-model", "messages": [{"role": "user", "content": "hi"}]},
            headers=CLIENT_HEADERS,
        ) as response:
            assert response.status == 200
    assert upstream.requests[-1].body["max_tokens"] == 4096


async def test_count_tokens_native_tokenizer_and_estimate(client, upstream):
    upstream.script({"json": {"input_tokens": 321}})
    native = await client.messages.count_tokens(model="native-model", messages=[{"role": "user", "content": "hello"}])
    assert native.input_tokens == 321
    assert upstream.requests[-1].path == "/v1/messages/count_tokens"
    assert upstream.requests[-1].body["model"] == "upstream-native-model"

    upstream.script({"json": {"count": 77, "max_model_len": 4096, "tokens": []}})
    exact = await client.messages.count_tokens(model="tokenize-model", messages=[{"role": "user", "content": "hello"}])
    assert exact.input_tokens == 77
    assert upstream.requests[-1].path == "/tokenize"
    assert upstream.requests[-1].body["messages"] == [{"role": "user", "content": "hello"}]

    before = len(upstream.requests)
    estimate = await client.messages.count_tokens(
        model="chat-model", messages=[{"role": "user", "content": "hello " * 100}], tools=[WEATHER_TOOL]
    )
    assert 130 <= estimate.input_tokens <= 250  # ~600 chars of text + the tool's schema
    assert len(upstream.requests) == before  # the local estimate calls no one


async def test_models_list_pages_and_retrieve(client):
    ids = [model.id async for model in client.models.list(limit=2)]
    assert ids == ["chat-model", "chat-alias", "tokenize-model", "openai-model", "native-model"]
    page = await client.models.list(limit=2)
    assert page.has_more is True and page.first_id == "chat-model" and page.last_id == "chat-alias"
    model = await client.models.retrieve("native-model")
    assert model.id == "native-model" and model.type == "model" and model.display_name == "native-model"
    with pytest.raises(anthropic.NotFoundError):
        await client.models.retrieve("no-such-model")


@pytest.mark.parametrize(
    ("reply", "exception", "status", "error_type"),
    [
        (
            error(400, "After the optional system message, conversation roles must alternate"),
            anthropic.BadRequestError,
            400,
            "invalid_request_error",
        ),
        (error(401, "Incorrect API key provided: sk-upstr****"), anthropic.InternalServerError, 500, "api_error"),
        (error(404, "The model `x` does not exist"), anthropic.NotFoundError, 404, "not_found_error"),
        (
            error(429, "Rate limit reached", headers={"retry-after": "7"}),
            anthropic.RateLimitError,
            429,
            "rate_limit_error",
        ),
        (error(500, "CUDA out of memory at /srv/vllm/worker.py"), anthropic.InternalServerError, 500, "api_error"),
        (error(503, "Service unavailable"), anthropic.OverloadedError, 529, "overloaded_error"),
        ({"status": 502, "body": "<html>Bad Gateway</html>"}, anthropic.OverloadedError, 529, "overloaded_error"),
    ],
)
async def test_upstream_errors_map_to_sdk_exceptions(client, upstream, reply, exception, status, error_type):
    upstream.script(reply)
    with pytest.raises(exception) as caught:
        await client.messages.create(model="chat-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    err = caught.value
    assert err.status_code == status
    assert err.body["type"] == "error" and err.body["error"]["type"] == error_type
    assert err.request_id and err.request_id.startswith("req_")
    assert err.body["request_id"] == err.request_id
    message = err.body["error"]["message"]
    # The gateway's own upstream credential problems and upstream internals never leak.
    assert "sk-upstr" not in message and "/srv/vllm" not in message
    if status == 400:
        assert "roles must alternate" in message
    if status == 429:
        assert err.response.headers["retry-after"] == "7"


async def test_context_length_error_in_messages_api_words(client, upstream):
    upstream.script(
        error(
            400,
            "This model's maximum context length is 102400 tokens. However, you requested 107837 tokens (99645 in the messages, 8192 in the completion). Please reduce the length.",
        )
    )
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(model="chat-model", max_tokens=8192, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["error"]["message"] == (
        "input length and `max_tokens` exceed context limit: 99645 + 8192 > 102400, decrease input length or max_tokens and try again"
    )


async def test_slow_upstream_times_out(client, upstream):
    upstream.script({**chat_message("late"), "delay": 5})
    with pytest.raises(anthropic.InternalServerError) as caught:
        await client.messages.create(model="chat-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 504
    assert caught.value.body["error"]["type"] == "timeout_error"


async def test_unreachable_upstream_is_overloaded():
    # Nobody listens on port 9 (discard): the client may retry later, so 529 overloaded_error.
    dead = await start_gateway(gateway_config("http://127.0.0.1:9"))
    try:
        async with anthropic.AsyncAnthropic(base_url=dead.url, api_key="client-key", max_retries=0) as sdk:
            with pytest.raises(anthropic.OverloadedError):
                await sdk.messages.create(model="chat-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    finally:
        await dead.runner.cleanup()


async def test_gateway_validation_errors(client, upstream):
    cases = [
        ({"model": "chat-model", "max_tokens": 5, "messages": []}, "messages"),
        ({"model": "chat-model", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "chat-model", "temperature": 2.5, "messages": [{"role": "user", "content": "x"}]}, "temperature"),
        ({"model": "chat-model", "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        (
            {"model": "chat-model", "thinking": {"type": "enabled"}, "messages": [{"role": "user", "content": "x"}]},
            "budget_tokens",
        ),
    ]
    for body, field in cases:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.post("/v1/messages", body=body, cast_to=object)
        assert field in caught.value.body["error"]["message"]
    assert upstream.requests == []  # nothing invalid reached the upstream


async def test_unknown_model_is_404(client):
    with pytest.raises(anthropic.NotFoundError) as caught:
        await client.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["error"] == {"type": "not_found_error", "message": "model: no-such-model"}


async def test_the_input_estimate_is_made_only_when_something_needs_it(client, upstream, monkeypatch):
    """team-a has no token limits: an answer with usage needs no estimate, a stream's
    message_start does (once), and so does an answer the upstream gave no usage for."""
    import gateway.admission as admission
    import gateway.backends.openai_chat as openai_chat

    made = []

    def counting(request):
        made.append(request["model"])
        return estimate(request)

    estimate = admission.estimate_input_tokens
    monkeypatch.setattr(admission, "estimate_input_tokens", counting)
    monkeypatch.setattr(openai_chat, "estimate_input_tokens", counting)
    ask = {"model": "chat-model", "max_tokens": 16, "messages": [{"role": "user", "content": "Hello"}]}

    upstream.script(chat_message("Hi", usage={"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}))
    await client.messages.create(**ask)
    assert made == []

    upstream.script({"sse": chat_chunks({"content": "Hi"})})
    async with client.messages.stream(**ask) as stream:
        await stream.get_final_message()
    assert made == ["chat-model"]

    answer = chat_message("Hi")
    del answer["json"]["usage"]  # no usage: the estimate stands in
    upstream.script(answer)
    message = await client.messages.create(**ask)
    assert made == ["chat-model", "chat-model"] and message.usage.input_tokens > 0
