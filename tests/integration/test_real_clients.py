"""Every request body captured from a real client (Claude Code 2.1.330, the Python SDK 1.17 and
2.12, the TypeScript SDK 1.12; tests/fixtures/clients/) replayed with its own headers,
path and query, through a translated route and a native route: each gets a 200.

Claude Code re-sends a turn up to five times on a 400 and falls back to `stream: false`
on a broken stream, so a body it sends being refused multiplies traffic silently.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.protocols.sse import SseDecoder
from tests.support.grammar import check_stream

CLIENTS = Path(__file__).parent.parent / "fixtures" / "clients"
# Transport headers belong to the capture's connection, not to the request.
SKIP_HEADERS = {"host", "content-length", "connection", "accept-encoding", "x-api-key", "authorization"}


def captured() -> list[tuple[str, dict, dict]]:
    cases = []
    for body_path in sorted(CLIENTS.glob("*/*.body.json")):
        stem = body_path.name[: -len(".body.json")]
        meta_path = body_path.with_name(stem.split("-turn")[0] + ".meta.json")
        if not meta_path.exists():
            meta_path = body_path.with_name(stem + ".meta.json")
        meta = json.loads(meta_path.read_text())
        cases.append((f"{body_path.parent.name}/{stem}", meta, json.loads(body_path.read_text())))
    burst = json.loads((CLIENTS / "claude-code-2.1.330" / "context-command-count-tokens-burst.json").read_text())
    cases.append(("claude-code-2.1.330/count-tokens-burst-0", burst[0]["meta"], burst[0]["body"]))
    return cases


CASES = captured()


def headers_of(meta: dict, auth: str) -> dict[str, str]:
    headers = {name: value for name, value in meta["headers"] if name.lower() not in SKIP_HEADERS}
    if auth == "bearer":
        headers["Authorization"] = "Bearer client-key"
    else:
        headers["x-api-key"] = "client-key"
    return headers


@pytest.mark.parametrize("route", ["chat-model", "native-model"])
@pytest.mark.parametrize(("name", "meta", "body"), CASES, ids=[case[0] for case in CASES])
async def test_captured_request_gets_200(gateway, upstream, route, name, meta, body):
    body = {**body, "model": route}
    path = meta["path"]
    query = {key: values[0] for key, values in (meta.get("query") or {}).items()}
    auth = "bearer" if any(n.lower() == "authorization" for n, _ in meta["headers"]) else "x-api-key"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gateway.url}{path}", params=query, data=orjson.dumps(body), headers=headers_of(meta, auth)
        ) as response:
            raw = await response.read()
            assert response.status == 200, raw[:500]
            assert response.headers["request-id"].startswith("req_")
            if body.get("stream"):
                assert response.headers["content-type"].startswith("text/event-stream")
                decoder = SseDecoder()
                events = [orjson.loads(e.data) for e in decoder.feed(raw) + decoder.flush()]
                check_stream(events)
                assert events[-1]["type"] == "message_stop"
            elif path.endswith("count_tokens"):
                assert isinstance(orjson.loads(raw)["input_tokens"], int)
            else:
                assert orjson.loads(raw)["type"] == "message"
    if path.endswith("count_tokens") and route == "chat-model":
        assert upstream.requests == []  # a local estimate: no upstream call
        return
    sent = upstream.requests[-1]
    if route == "native-model":
        # Passed through: every field the client sent arrives, under the route's model name.
        assert sent.body["model"] == "upstream-native-model"
        assert set(body) - {"metadata"} <= set(sent.body)
        for header in ("anthropic-beta", "anthropic-version"):
            client_value = next((v for n, v in meta["headers"] if n.lower() == header), None)
            if client_value:
                assert sent.headers[header] == client_value
    elif not path.endswith("count_tokens"):
        chat = sent.body
        assert chat["model"] == "upstream-chat-model"
        for field in ("context_management", "output_config", "thinking", "metadata", "cache_control"):
            assert field not in chat
        text = orjson.dumps(chat["messages"]).decode()
        assert "x-anthropic-billing-header" not in text  # defeats prefix caches upstream


async def test_claude_code_system_messages_keep_their_position(gateway, upstream):
    """Every Claude Code request has a `role: "system"` message inside `messages`; on a
    translated route it becomes a system message at that position, never a 400."""
    meta = json.loads((CLIENTS / "claude-code-2.1.330" / "tool-turn1.meta.json").read_text())
    body = json.loads((CLIENTS / "claude-code-2.1.330" / "tool-turn2-tool-result.body.json").read_text())
    body = {**body, "model": "chat-model", "stream": False}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gateway.url}/v1/messages?beta=true", data=orjson.dumps(body), headers=headers_of(meta, "x-api-key")
        ) as response:
            assert response.status == 200
    roles = [m["role"] for m in upstream.requests[-1].body["messages"]]
    assert roles == ["system", "user", "system", "assistant", "tool"]


async def test_head_api_hello_is_a_fast_404(gateway):
    async with aiohttp.ClientSession() as http:
        async with http.head(f"{gateway.url}/api/hello", headers={"User-Agent": "Bun/1.4.4"}) as response:
            assert response.status == 404
            assert response.headers["request-id"].startswith("req_")


async def test_model_discovery_lists_routable_models(gateway):
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{gateway.url}/v1/models", params={"limit": "1000"}, headers={"x-api-key": "client-key"}
        ) as response:
            page = await response.json()
    assert [m["id"] for m in page["data"]] == [
        "chat-model",
        "chat-alias",
        "tokenize-model",
        "openai-model",
        "native-model",
    ]
    assert page["has_more"] is False and page["first_id"] == "chat-model" and page["last_id"] == "native-model"
    assert all(set(m) == {"type", "id", "display_name", "created_at"} for m in page["data"])
