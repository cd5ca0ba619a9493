"""What the HTTP edge answers to input that never reaches a handler's logic: every answer is
a Messages error body with the right status and a request id, never a 500 or a traceback."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from tests.support.servers import CLIENT_HEADERS, gateway_config, start_gateway

MINIMAL = {"model": "chat-model", "messages": [{"role": "user", "content": "x"}]}


async def post(url: str, data: bytes, content_type: str = "application/json") -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=data, headers={"content-type": content_type, **CLIENT_HEADERS}) as response:
            return response.status, dict(response.headers), orjson.loads(await response.read())


def assert_error(status: int, headers: dict, body: dict, want_status: int, want_type: str) -> None:
    assert status == want_status, body
    assert body["type"] == "error" and body["error"]["type"] == want_type
    assert body["request_id"] == headers["request-id"]
    assert "Traceback" not in body["error"]["message"]


@pytest.mark.parametrize(
    ("data", "content_type", "status", "error_type", "says"),
    [
        (b"{not json", "application/json", 400, "invalid_request_error", "not valid JSON"),
        (b"", "application/json", 400, "invalid_request_error", "empty"),
        (orjson.dumps(MINIMAL), "text/plain", 400, "invalid_request_error", "Content-Type"),
        (b"model=x", "application/x-www-form-urlencoded", 400, "invalid_request_error", "Content-Type"),
        (b"[1, 2]", "application/json", 400, "invalid_request_error", "object"),
        (b'"just a string"', "application/json", 400, "invalid_request_error", "object"),
        (
            orjson.dumps({**MINIMAL, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}),
            "application/json",
            400,
            "invalid_request_error",
            "messages.0.content.0.source.type",
        ),
        (b"\xff\xfe\x00garbage", "application/json", 400, "invalid_request_error", "not valid JSON"),
    ],
)
async def test_bad_bodies(gateway, upstream, data, content_type, status, error_type, says):
    got_status, headers, body = await post(f"{gateway.url}/v1/messages", data, content_type)
    assert_error(got_status, headers, body, status, error_type)
    assert says in body["error"]["message"]
    assert upstream.requests == []


async def test_body_over_the_limit_is_413(upstream):
    small = await start_gateway(
        gateway_config(upstream.url).replace("ping_interval: 0.2", "ping_interval: 0.2, max_body_bytes: 2048")
    )
    try:
        big = orjson.dumps({**MINIMAL, "messages": [{"role": "user", "content": "x" * 4096}]})
        status, headers, body = await post(f"{small.url}/v1/messages", big)
        assert_error(status, headers, body, 413, "request_too_large")
        assert "2048" in body["error"]["message"]
    finally:
        await small.runner.cleanup()


async def test_unknown_path_and_method(gateway):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/v1/nothing-here", headers=CLIENT_HEADERS) as response:
            assert_error(response.status, dict(response.headers), await response.json(), 404, "not_found_error")
        async with http.get(f"{gateway.url}/v1/messages", headers=CLIENT_HEADERS) as response:
            assert_error(response.status, dict(response.headers), await response.json(), 405, "invalid_request_error")


async def test_count_tokens_validates_too(gateway):
    status, headers, body = await post(f"{gateway.url}/v1/messages/count_tokens", orjson.dumps({"model": "chat-model"}))
    assert_error(status, headers, body, 400, "invalid_request_error")
    assert body["error"]["message"] == "messages: Field required"


async def test_success_carries_request_id(gateway):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gateway.url}/v1/messages", json=MINIMAL, headers=CLIENT_HEADERS) as response:
            assert response.status == 200
            assert response.headers["request-id"].startswith("req_")
            assert (await response.json())["content"][0]["text"].startswith("Hello from the demo upstream")
