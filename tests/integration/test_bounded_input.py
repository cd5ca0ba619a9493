"""Input a client with one valid key could use to freeze a worker or crash a request,
through the real gateway: past each bound the answer is a 400 in the Messages error
shape, naming the bound, on `/v1/messages` and `/v1/messages/count_tokens` alike; at
the bound the request is served. Nothing refused reaches the upstream, and nothing is
logged with a traceback.

- `server.max_messages` (100,000, Anthropic's own cap) and `server.max_blocks_per_message`;
- `server.max_json_depth`: JSON nested deeper than orjson can encode again (254 levels,
  below the 1024 it parses) or Python can walk was a 500;
- the model name, echoed into 404s and the access log: at most 256 characters;
- the headers the gateway forwards or echoes (`anthropic-beta`, `anthropic-version`,
  `x-team-id`): bytes past ASCII were forwarded, or (not UTF-8) a 500.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import anthropic
import orjson
import pytest

from gateway.protocols.messages import DEFAULT_CAPS, MAX_MODEL_NAME
from tests.support.servers import CLIENT_HEADERS, gateway_config, start_gateway

ENDPOINTS = ("/v1/messages", "/v1/messages/count_tokens")
TURN = {"role": "user", "content": "x"}


async def post(url: str, body: bytes) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url, data=body, headers={"content-type": "application/json", **CLIENT_HEADERS}
        ) as response:
            return response.status, orjson.loads(await response.read())


def assert_refused(status: int, body: dict, says: str) -> None:
    assert status == 400, body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
    assert says in body["error"]["message"], body["error"]["message"]


@pytest.fixture
def logs(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("gateway.access"), "propagate", True)  # as `gateway serve` may have left it
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_no_traceback(logs) -> None:
    assert logs.records, "nothing was logged at all"
    assert not [r for r in logs.records if r.exc_info], [r.getMessage() for r in logs.records if r.exc_info]
    assert "Traceback" not in logs.text


# ---------------------------------------------------------------------------- messages and blocks


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_messages_past_the_cap_are_refused_and_at_it_served(gateway, upstream, logs, path):
    cap = DEFAULT_CAPS.max_messages
    status, body = await post(gateway.url + path, orjson.dumps({"model": "chat-model", "messages": [TURN] * (cap + 1)}))
    assert_refused(status, body, f"messages: {cap + 1} messages, more than the limit of {cap} (server.max_messages)")
    assert upstream.requests == []

    status, body = await post(gateway.url + path, orjson.dumps({"model": "chat-model", "messages": [TURN] * cap}))
    assert status == 200, body
    if path == "/v1/messages":  # one user turn of `cap` lines reached the upstream
        sent = upstream.requests[-1].body["messages"]
        assert sent == [{"role": "user", "content": "\n".join(["x"] * cap)}]
    await gateway.settled()
    assert_no_traceback(logs)


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_blocks_past_the_cap_are_refused_and_at_it_served(gateway, upstream, logs, path):
    cap = DEFAULT_CAPS.max_blocks_per_message
    block = {"type": "text", "text": "x"}
    many = {
        "model": "chat-model",
        "messages": [TURN, {"role": "assistant", "content": "ok"}, {"role": "user", "content": [block] * (cap + 1)}],
    }
    status, body = await post(gateway.url + path, orjson.dumps(many))
    assert_refused(
        status,
        body,
        f"messages.2.content: {cap + 1} content blocks, more than the limit of {cap} (server.max_blocks_per_message)",
    )
    inner = {"type": "tool_result", "tool_use_id": "t1", "content": [block] * (cap + 1)}
    status, body = await post(
        gateway.url + path, orjson.dumps({**many, "messages": [{"role": "user", "content": [inner]}]})
    )
    assert_refused(status, body, f"messages.0.content.0.content: {cap + 1} content blocks")
    assert upstream.requests == []

    status, body = await post(
        gateway.url + path, orjson.dumps({**many, "messages": [{"role": "user", "content": [block] * cap}]})
    )
    assert status == 200, body
    await gateway.settled()
    assert_no_traceback(logs)


async def test_the_caps_are_settings(upstream):
    config = gateway_config(upstream.url).replace(
        "ping_interval: 0.2", "ping_interval: 0.2, max_messages: 3, max_blocks_per_message: 2"
    )
    small = await start_gateway(config)
    try:
        async with anthropic.AsyncAnthropic(base_url=small.url, api_key="client-key", max_retries=0) as sdk:
            with pytest.raises(anthropic.BadRequestError) as caught:
                await sdk.messages.create(model="chat-model", max_tokens=5, messages=[TURN, TURN, TURN, TURN])
            assert caught.value.body["error"]["message"] == (
                "messages: 4 messages, more than the limit of 3 (server.max_messages)"
            )
            with pytest.raises(anthropic.BadRequestError) as caught:
                await sdk.messages.count_tokens(
                    model="chat-model", messages=[{"role": "user", "content": [{"type": "text", "text": "x"}] * 3}]
                )
            assert "more than the limit of 2 (server.max_blocks_per_message)" in caught.value.body["error"]["message"]
            answer = await sdk.messages.create(model="chat-model", max_tokens=5, messages=[TURN, TURN, TURN])
            assert answer.type == "message"
    finally:
        await small.runner.cleanup()


# ---------------------------------------------------------------------------- nesting


def nested(levels: int, leaf: bytes = b"{}") -> bytes:
    """JSON text of objects `levels` deep (orjson will not encode past 254, so not built by it)."""
    return b'{"a":' * (levels - 1) + leaf + b"}" * (levels - 1)


def with_schema(levels: int, model: str = "chat-model") -> bytes:
    """A request whose only tool's schema takes it to `levels` levels: the body is level 1,
    `tools` 2, the tool 3, `input_schema` 4."""
    return (
        b'{"model":"' + model.encode() + b'","max_tokens":5,"messages":[{"role":"user","content":"x"}],'
        b'"tools":[{"name":"t","input_schema":' + nested(levels - 3) + b"}]}"
    )


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("model", ["chat-model", "native-model"])
async def test_the_deepest_legal_schema_is_served(gateway, upstream, logs, path, model):
    status, body = await post(gateway.url + path, with_schema(DEFAULT_CAPS.max_json_depth, model))
    assert status == 200, body
    if path == "/v1/messages":
        sent = upstream.requests[-1].body
        schema = (
            sent["tools"][0]["function"]["parameters"] if model == "chat-model" else sent["tools"][0]["input_schema"]
        )
        depth = 1
        while schema:
            schema, depth = schema["a"], depth + 1
        assert depth == DEFAULT_CAPS.max_json_depth - 3  # every level of it reached the upstream
    await gateway.settled()
    assert_no_traceback(logs)


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "levels",
    [
        DEFAULT_CAPS.max_json_depth + 1,
        255,  # past what orjson encodes: was a 500 when the request was encoded for the upstream
        1000,  # past Python's recursion limit: was a RecursionError for an output schema
    ],
)
async def test_a_schema_nested_too_deep_is_refused(gateway, upstream, logs, path, levels):
    status, body = await post(gateway.url + path, with_schema(levels))
    limit = DEFAULT_CAPS.max_json_depth
    assert_refused(
        status, body, f"tools.0.input_schema.a.a...: JSON nested more than {limit} levels deep (server.max_json_depth)"
    )
    output = (
        b'{"model":"chat-model","messages":[{"role":"user","content":"x"}],'
        b'"output_config":{"format":{"type":"json_schema","schema":' + nested(levels - 3) + b"}}}"
    )
    status, body = await post(gateway.url + path, output)
    assert_refused(status, body, "output_config.format.schema.a.a...: JSON nested more than")
    assert upstream.requests == []
    await gateway.settled()
    assert_no_traceback(logs)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("metadata", nested(300), "metadata.a.a.a.a...: JSON nested"),
        ("container", nested(300), "container.a.a.a.a...: JSON nested"),  # a field only native backends read
        (
            "messages",
            b'[{"role":"user","content":[{"type":"tool_use","id":"t","name":"f","input":' + nested(300) + b"}]}]",
            "messages.0.content.0.input...: JSON nested",
        ),
    ],
)
async def test_anything_nested_too_deep_is_refused(gateway, upstream, logs, field, value, says):
    base = b'{"model":"native-model","max_tokens":5,"messages":[{"role":"user","content":"x"}]'
    if field == "messages":
        base = b'{"model":"native-model","max_tokens":5'
    status, body = await post(gateway.url + "/v1/messages", base + b',"' + field.encode() + b'":' + value + b"}")
    assert_refused(status, body, says)
    assert upstream.requests == []
    await gateway.settled()
    assert_no_traceback(logs)


async def test_past_what_the_parser_takes_is_not_json(gateway, upstream, logs):
    status, body = await post(gateway.url + "/v1/messages", with_schema(1100))
    assert_refused(status, body, "request body is not valid JSON")
    await gateway.settled()
    assert_no_traceback(logs)


# ---------------------------------------------------------------------------- the model name


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_a_huge_model_name_is_refused_not_echoed(gateway, upstream, logs, path):
    """A 30 MB name (the body limit is 32 MiB) went into the 404's body and the access log."""
    huge = "m" * 30_000_000
    status, body = await post(gateway.url + path, orjson.dumps({"model": huge, "max_tokens": 5, "messages": [TURN]}))
    assert_refused(status, body, f"model: String should have at most {MAX_MODEL_NAME} characters")
    assert len(orjson.dumps(body)) < 1000

    status, body = await post(
        gateway.url + path, orjson.dumps({"model": "m" * (MAX_MODEL_NAME + 1), "messages": [TURN]})
    )
    assert_refused(status, body, "model: String should have at most")
    status, body = await post(gateway.url + path, orjson.dumps({"model": "m" * MAX_MODEL_NAME, "messages": [TURN]}))
    assert status == 404 and body["error"] == {"type": "not_found_error", "message": f"model: {'m' * MAX_MODEL_NAME}"}
    assert upstream.requests == []
    await gateway.settled()
    assert_no_traceback(logs)
    assert max(len(r.getMessage()) for r in logs.records) < 10_000


# ---------------------------------------------------------------------------- headers


async def raw_post(url: str, path: str, header: bytes, body: bytes) -> tuple[int, dict]:
    """One request written by hand: no client library sends these bytes in a header."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST " + path.encode() + b" HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
            b"x-api-key: client-key\r\n" + header + b"\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        head, _, payload = (await reader.read()).partition(b"\r\n\r\n")
    finally:
        writer.close()
    return int(head.split(b" ")[1]), orjson.loads(payload)


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "header",
    [
        b"anthropic-beta: caf\xc3\xa9-2025",  # UTF-8: was forwarded to the upstream as it was
        b"anthropic-beta: \xff\xfe",  # not UTF-8: was a 500 when encoding the upstream request
        b"anthropic-beta: a\tb",  # a control character the HTTP parser lets through
        b"anthropic-version: 2023-06-01\xa0",
        b"x-team-id: \xff\xfe",  # echoed into the 403: was a 500 without a Messages body
    ],
)
async def test_a_header_value_that_is_not_printable_ascii_is_refused(gateway, upstream, logs, path, header):
    name = header.split(b":")[0].decode()
    body = orjson.dumps({"model": "native-model", "max_tokens": 5, "messages": [TURN]})
    status, answer = await raw_post(gateway.url, path, header, body)
    assert_refused(status, answer, f"{name}: a header value must be printable ASCII")
    assert upstream.requests == []
    await gateway.settled()
    assert_no_traceback(logs)


async def test_printable_headers_are_forwarded(gateway, upstream):
    body = orjson.dumps({"model": "native-model", "max_tokens": 5, "messages": [TURN]})
    beta = b"interleaved-thinking-2025-05-14, fine-grained-tool-streaming-2025-05-14"
    status, answer = await raw_post(gateway.url, "/v1/messages", b"anthropic-beta: " + beta, body)
    assert status == 200, answer
    assert upstream.requests[-1].headers["anthropic-beta"] == beta.decode()


@pytest.mark.parametrize("header", [b"anthropic-beta: a\x01b", b"anthropic-beta: a\x7fb", b"x-team-id: a\x00b"])
async def test_other_control_characters_never_reach_the_upstream(gateway, upstream, header):
    """The HTTP parser refuses these before the app sees the request (its own 400, in
    text, naming the header): only a tab of the control characters gets through to it."""
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /v1/messages HTTP/1.1\r\nhost: gateway\r\nx-api-key: client-key\r\n"
            + header
            + b"\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"
        )
        answer = await reader.read()
    finally:
        writer.close()
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"400"
    assert header.split(b":")[0] in answer
    assert upstream.requests == []
