"""A broken or hostile upstream, through the real app: answers that never end or inflate
without bound, and error text that echoes credentials.

An answer past its backend's `max_response_bytes` (whole answers, error bodies, a gzip
bomb) is a 502 `api_error`; a stream line or event past `max_event_bytes` ends the stream
with an `error` event after what came before it. Either way the upstream connection is
dropped (the scripted upstream sees the gateway leave), the deployment's breaker and the
access log are told (`protocol`, `stream_protocol`), and the team's one concurrency slot
is free for the next request. The caps here are small so each test moves a few MB; the
defaults are checked in tests/unit/test_config.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import anthropic
import orjson
import pytest

from gateway.protocols.sse import SseDecoder
from gateway.runtime import RUNTIME
from tests.support.replies import chat_chunks
from tests.support.servers import CLIENT_HEADERS, Running, start_gateway

MAX_RESPONSE = 1024 * 1024
MAX_EVENT = 64 * 1024
ASK = {"max_tokens": 50, "messages": [{"role": "user", "content": "hello"}]}
BACKEND = {"chat-model": "chat", "native-model": "native"}

CONFIG = """
server: {{ping_interval: 5}}
routing: {{retries: 0, cooldown: {{failures: 100}}}}
teams:
  - id: team-a
    limits: {{concurrent_requests: 1}}
    keys:
      - {{name: client, key: client-key}}
backends:
  chat:
    type: openai
    base_url: {url}/v1
    api_key: upstream-chat-key
    preset: vllm
    max_response_bytes: {max_response}
    max_event_bytes: {max_event}
    timeouts: {{connect: 2, first_byte: 10, idle: 10, total: 60}}
  native:
    type: anthropic
    base_url: {url}
    api_key: upstream-native-key
    max_response_bytes: {max_response}
    max_event_bytes: {max_event}
    timeouts: {{connect: 2, first_byte: 10, idle: 10, total: 60}}
models:
  - name: chat-model
    routes: [{{backend: chat, model: upstream-chat-model}}]
  - name: native-model
    routes: [{{backend: native, model: upstream-native-model}}]
"""


@pytest.fixture
async def gateway(upstream):
    running = await start_gateway(CONFIG.format(url=upstream.url, max_response=MAX_RESPONSE, max_event=MAX_EVENT))
    yield running
    await running.runner.cleanup()


@pytest.fixture
def access_log(caplog, monkeypatch):
    """The access-log lines recorded so far (`gateway serve` may have stopped their propagation)."""
    monkeypatch.setattr(logging.getLogger("gateway.access"), "propagate", True)
    caplog.set_level(logging.DEBUG)
    return lambda: [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]


async def stream(url: str, body: dict) -> tuple[int, list[dict]]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/messages", json={**body, "stream": True}, headers=CLIENT_HEADERS) as response:
            raw = await response.read()
    if response.status != 200:
        return response.status, [orjson.loads(raw)]
    decoder = SseDecoder()
    return 200, [orjson.loads(e.data) for e in decoder.feed(raw) + decoder.flush()]


async def released(gateway: Running, upstream, model: str) -> None:
    """The failed request let go of everything: the upstream saw its connection dropped,
    the deployment's breaker counted the failure, and the team's one concurrency slot
    serves the next request."""
    deadline = time.monotonic() + 10
    while upstream.disconnects < 1:
        assert time.monotonic() < deadline, "the upstream connection was not dropped"
        await asyncio.sleep(0.01)
    assert upstream.disconnects == 1
    await gateway.settled()
    router = gateway.app[RUNTIME].routes.router
    assert not router.breaker(router.resolve(model).primary).pristine
    async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key="client-key", max_retries=0) as sdk:
        answer = await sdk.messages.create(model=model, **ASK)
    assert answer.content[0].text.startswith("Hello from the demo upstream")


# ---------------------------------------------------------------- whole answers

WHOLE = {
    "body-past-the-cap": {"body": "x" * 65536, "repeat": "forever"},
    "gzip-bomb": {"body": " " * 65536, "repeat": "forever", "gzip": True},
    "error-body-past-the-cap": {"status": 500, "body": "e" * 65536, "repeat": "forever"},
}


@pytest.mark.parametrize("model", BACKEND)
@pytest.mark.parametrize("reply", WHOLE.values(), ids=WHOLE.keys())
async def test_a_whole_answer_past_the_cap_is_a_502_and_releases_everything(
    gateway, upstream, access_log, model, reply
):
    upstream.script(reply)
    async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key="client-key", max_retries=0) as sdk:
        with pytest.raises(anthropic.InternalServerError) as caught:
            await sdk.messages.create(model=model, **ASK)
    assert caught.value.status_code == 502
    error = caught.value.body["error"]
    assert error["type"] == "api_error" and f"({MAX_RESPONSE} bytes, max_response_bytes)" in error["message"]
    await released(gateway, upstream, model)
    line = access_log()[0]
    assert line["status"] == 502 and line["upstream_errors"] == [f"{BACKEND[model]}:protocol"]


# ---------------------------------------------------------------- streams

NATIVE_START = [
    {
        "event": "message_start",
        "data": {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "upstream-native-model",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 5, "output_tokens": 1},
            },
        },
    },
    {
        "event": "content_block_start",
        "data": {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    },
    {
        "event": "content_block_delta",
        "data": {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    },
]
STARTS = {"chat-model": chat_chunks({"content": "Hello"})[:2], "native-model": NATIVE_START}
STREAMS = {
    "endless-line": ({}, ["data: ", "x" * 16384]),
    "endless-event": ({}, ["data: x\n" * 1024]),
    "gzip-bomb": ({"gzip": True}, ["data: ", " " * 65536]),
}


@pytest.mark.parametrize("model", BACKEND)
@pytest.mark.parametrize(("options", "tail"), STREAMS.values(), ids=STREAMS.keys())
async def test_a_stream_line_or_event_past_the_cap_ends_in_an_error_event(
    gateway, upstream, access_log, model, options, tail
):
    upstream.script({"sse": [*STARTS[model], *tail], "repeat": "forever", **options})
    status, events = await stream(gateway.url, {"model": model, **ASK})
    assert status == 200
    assert [e["type"] for e in events] == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert events[2]["delta"]["text"] == "Hello"
    assert events[-1]["error"] == {
        "type": "api_error",
        "message": f"the model's backend sent a stream line or event longer than {MAX_EVENT} bytes",
    }
    await released(gateway, upstream, model)
    line = access_log()[0]
    assert line["status"] == 200 and line["error_type"] == "api_error"
    assert line["upstream_errors"] == [f"{BACKEND[model]}:stream_protocol"]


@pytest.mark.parametrize("model", BACKEND)
async def test_a_stream_read_that_inflates_past_the_cap_ends_in_an_error_event(gateway, upstream, access_log, model):
    """4 MiB of spaces gzip to a few KB, written at once: one read inflates past
    `max_response_bytes`, and is refused before any of it is held."""
    upstream.script({"sse": [*STARTS[model], "data: " + " " * (4 * MAX_RESPONSE)], "gzip": True, "repeat": "forever"})
    status, events = await stream(gateway.url, {"model": model, **ASK})
    assert status == 200
    assert [e["type"] for e in events] == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert events[-1]["error"] == {
        "type": "api_error",
        "message": (
            f"the model's backend sent more at once than the gateway holds ({MAX_RESPONSE} bytes, max_response_bytes)"
        ),
    }
    await released(gateway, upstream, model)
    assert access_log()[0]["upstream_errors"] == [f"{BACKEND[model]}:stream_protocol"]


@pytest.mark.parametrize("model", BACKEND)
async def test_a_refused_stream_whose_error_body_never_ends_is_a_502(gateway, upstream, access_log, model):
    upstream.script({"status": 400, "body": "e" * 65536, "repeat": "forever"})
    status, (body,) = await stream(gateway.url, {"model": model, **ASK})
    assert status == 502 and body["error"]["type"] == "api_error"
    await released(gateway, upstream, model)
    assert access_log()[0]["upstream_errors"] == [f"{BACKEND[model]}:protocol"]


# ---------------------------------------------------------------- credentials in upstream text

LEAKED = (
    "gsk_4fQ2kLmN8pRsTuVwXyZa0123",
    "xai-Zq8Yw7Xv6Ut5Sr4Qp3On2Ml1",
    "hf_AbCdEfGhIjKlMnOpQrStUvWx",
    "0123456789abcdef0123456789abcdef",
    "Zx9Yw8Vu7Ts6Rq5",
)
LEAKY = (
    f"bad key {LEAKED[0]}, tried {LEAKED[1]} and {LEAKED[2]}; subscription key {LEAKED[3]} "
    f"from /deployments/x?api-key={LEAKED[4]}"
)


def leaky_error(status: int = 400) -> dict:
    return {"status": status, "json": {"error": {"message": LEAKY, "type": "invalid_request_error"}}}


LEAKS = {
    "chat-error-status": ("chat-model", False, leaky_error()),
    "native-error-status": ("native-model", False, leaky_error()),
    "chat-refused-stream": ("chat-model", True, leaky_error(422)),
    "chat-error-chunk": ("chat-model", True, {"sse": [*STARTS["chat-model"], {"error": {"message": LEAKY}}]}),
    "native-error-event": (
        "native-model",
        True,
        {
            "sse": [
                *NATIVE_START,
                {"event": "error", "data": {"type": "error", "error": {"type": "api_error", "message": LEAKY}}},
            ]
        },
    ),
}


@pytest.mark.parametrize(("model", "streamed", "reply"), LEAKS.values(), ids=LEAKS.keys())
async def test_credentials_in_upstream_error_text_reach_neither_the_client_nor_the_logs(
    gateway, upstream, caplog, access_log, model, streamed, reply
):
    upstream.script(reply)
    if streamed:
        _, events = await stream(gateway.url, {"model": model, **ASK})
        answer = events[-1]
    else:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{gateway.url}/v1/messages", json={"model": model, **ASK}, headers=CLIENT_HEADERS
            ) as response:
                answer = await response.json()
    assert answer["type"] == "error"
    message = answer["error"]["message"]
    assert message.startswith("bad key [redacted], tried [redacted] and [redacted]; subscription key [redacted]")
    assert message.endswith("api-key=[redacted]")
    await gateway.settled()
    assert access_log()  # the logs were captured
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    for secret in LEAKED:
        assert secret not in message and secret not in logged, secret
