"""What a native backend lets through to its upstream, through the real gateway (memory
store) and the scripted upstream: the upstream holds the operator's organisation key, so a
beta, field, tool or content block that reaches the organisation's stored resources
(Files API files, containers, MCP servers) must be refused unless the operator allowed it.

Before the policy, every `anthropic-beta`, every tool and every body field reached the
upstream as sent: a tenant who learnt another's file or container id could use it.
What Claude Code sends must still pass untouched, or Claude Code breaks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp
import anthropic
import orjson
import pytest

from gateway.runtime import RUNTIME
from tests.support.replies import native_message
from tests.support.servers import start_gateway

CLIENTS = Path(__file__).parent.parent / "fixtures" / "clients" / "claude-code-2.1.330"
CLAUDE_CODE_BETAS = (
    "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,per-turn-control-2026-07-01,"
    "mid-conversation-tool-changes-2026-07-01,thinking-token-count-2026-05-13,advanced-tool-use-2025-11-20,"
    "effort-2025-11-24"
)
# USD per million tokens (input, output) and per thousand web searches.
PRICES = (1.0, 5.0, 10.0)
ADMIN_TOKEN = "admin-token-for-passthrough"


def config(upstream_url: str, team_a: str = "") -> str:
    """`team_a`: more settings of team `team-a` (the team of `client-key`)."""
    per_input, per_output, per_search = PRICES
    return f"""
admin: {{token: {ADMIN_TOKEN}}}
teams:
  - id: team-a
    keys: [{{name: client, key: client-key}}]
    {team_a}
  - id: narrow
    passthrough: {{betas: ["claude-code-*"], tools: [custom]}}
    keys: [{{name: narrow, key: narrow-key}}]
  - id: widener
    passthrough: {{betas: ["*"], tools: ["*"], fields: ["*"], files: true}}
    keys: [{{name: widener, key: widener-key}}]
  - id: budget
    limits: {{cost_per_month_usd: 0.05}}
    keys: [{{name: budget, key: budget-key}}]
backends:
  native:
    type: anthropic
    base_url: {upstream_url}
    api_key: upstream-native-key
  wide:
    type: anthropic
    base_url: {upstream_url}
    api_key: upstream-native-key
    passthrough: {{betas: ["*"], tools: ["*"], fields: ["*"], files: true}}
  chat:
    type: openai
    base_url: {upstream_url}/v1
    preset: vllm
models:
  - name: native-model
    routes: [{{backend: native, model: upstream-native-model}}]
  - name: wide-model
    routes: [{{backend: wide, model: upstream-native-model}}]
  - name: chat-model
    routes: [{{backend: chat, model: upstream-chat-model}}]
  - name: priced-model
    routes: [{{backend: native, model: upstream-native-model}}]
    pricing: {{input_per_mtok: {per_input}, output_per_mtok: {per_output}, web_search_per_thousand: {per_search}}}
"""


@pytest.fixture
async def gateway(upstream):
    running = await start_gateway(config(upstream.url))
    yield running
    await running.runner.cleanup()


ASK = {"max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}


def image(source: dict) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image", "source": source}]}


# (what the request adds: headers, body fields; the refusal's message)
ORG_SCOPED = {
    "files-api-beta": (
        {"anthropic-beta": f"{CLAUDE_CODE_BETAS},files-api-2025-04-14"},
        {},
        "anthropic-beta 'files-api-2025-04-14' is not allowed on this route (passthrough.betas)",
    ),
    "mcp-client-beta": (
        {"anthropic-beta": "mcp-client-2025-11-20"},
        {},
        "anthropic-beta 'mcp-client-2025-11-20' is not allowed on this route (passthrough.betas)",
    ),
    "container": (
        {},
        {"container": "container_011CPR5CNjB747bTd36fQLFk"},
        "container: the field 'container' is not allowed on this route (passthrough.fields)",
    ),
    "mcp-servers": (
        {},
        {"mcp_servers": [{"type": "url", "url": "https://mcp.example.com/sse", "name": "example"}]},
        "mcp_servers: the field 'mcp_servers' is not allowed on this route (passthrough.fields)",
    ),
    "unknown-field": (
        {},
        {"brand_new_field": {"x": 1}},
        "brand_new_field: the field 'brand_new_field' is not allowed on this route (passthrough.fields)",
    ),
    "code-execution-tool": (
        {},
        {"tools": [{"type": "code_execution_20250825", "name": "code_execution"}]},
        "tools.0.type: the tool type 'code_execution_20250825' is not allowed on this route (passthrough.tools)",
    ),
    "mcp-toolset": (
        {},
        {"tools": [{"type": "mcp_toolset", "name": "example", "mcp_server_name": "example"}]},
        "tools.0.type: the tool type 'mcp_toolset' is not allowed on this route (passthrough.tools)",
    ),
    "image-file-source": (
        {},
        {"messages": [image({"type": "file", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"})]},
        "messages.0.content.1.source.file_id: Files API references (file_id) are not allowed on this route"
        " (passthrough.files)",
    ),
    "document-file-source": (
        {},
        {"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "file", "file_id": "f"}}]}]},
        "messages.0.content.0.source.file_id: Files API references (file_id) are not allowed on this route"
        " (passthrough.files)",
    ),
    "container-upload": (
        {},
        {"messages": [{"role": "user", "content": [{"type": "container_upload", "file_id": "file_2"}]}]},
        "messages.0.content.0.file_id: Files API references (file_id) are not allowed on this route (passthrough.files)",
    ),
}


async def post(
    url: str, body: dict, key: str = "client-key", headers: dict | None = None, path: str = "/v1/messages"
) -> tuple[int, dict | bytes]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}{path}",
            data=orjson.dumps(body),
            headers={"x-api-key": key, "content-type": "application/json", **(headers or {})},
        ) as response:
            raw = await response.read()
            if response.content_type == "application/json":
                return response.status, orjson.loads(raw)
            return response.status, raw


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("case", list(ORG_SCOPED))
async def test_org_scoped_features_are_refused_by_default(gateway, upstream, case, stream):
    headers, extra, message = ORG_SCOPED[case]
    status, answer = await post(
        gateway.url, {"model": "native-model", **ASK, **extra, "stream": stream}, headers=headers
    )
    assert status == 400, answer
    assert answer["type"] == "error"
    assert answer["error"] == {"type": "invalid_request_error", "message": message}
    assert upstream.requests == []  # refused before anything left


@pytest.mark.parametrize("case", list(ORG_SCOPED))
async def test_a_backend_that_allows_them_passes_them_as_sent(gateway, upstream, case):
    headers, extra, _ = ORG_SCOPED[case]
    upstream.script(native_message([{"type": "text", "text": "ok"}]))
    body = {"model": "wide-model", **ASK, **extra}
    status, answer = await post(gateway.url, body, headers=headers)
    assert status == 200, answer
    sent = upstream.requests[-1]
    assert sent.body == {**body, "model": "upstream-native-model"}
    if "anthropic-beta" in headers:
        assert sent.headers["anthropic-beta"] == headers["anthropic-beta"]


def claude_code_requests() -> list[tuple[str, dict, dict]]:
    """(name, its `anthropic-*` headers, body) of every captured Claude Code request."""
    cases = []
    for path in sorted(CLIENTS.glob("*.body.json")):
        stem = path.name.removesuffix(".body.json")
        meta = json.loads(path.with_name(f"{stem}.meta.json").read_text())
        headers = {name.lower(): value for name, value in meta["headers"] if name.lower().startswith("anthropic-")}
        cases.append((stem, headers, json.loads(path.read_text())))
    return cases


CLAUDE_CODE = claude_code_requests()


@pytest.mark.parametrize(("name", "headers", "body"), CLAUDE_CODE, ids=[case[0] for case in CLAUDE_CODE])
async def test_claude_code_requests_reach_the_upstream_unchanged(gateway, upstream, name, headers, body):
    """Every captured Claude Code request, with its betas, on a route with the default
    policy: the upstream gets exactly what Claude Code sent, but for the model's name."""
    assert "anthropic-beta" in headers
    upstream.script(native_message([{"type": "text", "text": "ok"}]))
    body = {**body, "model": "native-model", "stream": False}
    status, answer = await post(gateway.url, body, headers=headers)
    assert status == 200, answer
    sent = upstream.requests[-1]
    assert sent.body == {**body, "model": "upstream-native-model"}
    assert sent.headers["anthropic-beta"] == headers["anthropic-beta"]


async def test_a_team_narrows_its_backends_policy(gateway, upstream):
    search = {"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]}
    status, answer = await post(gateway.url, {"model": "wide-model", **ASK, **search}, key="narrow-key")
    assert status == 400
    assert answer["error"]["message"] == (
        "tools.0.type: the tool type 'web_search_20250305' is not allowed for team 'narrow' (teams[].passthrough.tools)"
    )
    status, answer = await post(
        gateway.url, {"model": "wide-model", **ASK}, key="narrow-key", headers={"anthropic-beta": "effort-2025-11-24"}
    )
    assert status == 400
    assert answer["error"]["message"] == (
        "anthropic-beta 'effort-2025-11-24' is not allowed for team 'narrow' (teams[].passthrough.betas)"
    )
    assert upstream.requests == []
    # What the narrowing leaves passes; other teams are not narrowed by it.
    upstream.script(native_message([{"type": "text", "text": "ok"}]), native_message([{"type": "text", "text": "ok"}]))
    status, _ = await post(
        gateway.url,
        {"model": "wide-model", **ASK},
        key="narrow-key",
        headers={"anthropic-beta": "claude-code-20250219"},
    )
    assert status == 200
    status, _ = await post(gateway.url, {"model": "wide-model", **ASK, **search})
    assert status == 200
    assert upstream.requests[-1].body["tools"] == search["tools"]


async def test_a_team_cannot_widen_its_backends_policy(gateway, upstream):
    for headers, extra, message in ORG_SCOPED.values():
        body = {"model": "native-model", **ASK, **extra}
        status, answer = await post(gateway.url, body, key="widener-key", headers=headers)
        assert status == 400
        assert answer["error"]["message"] == message
    assert upstream.requests == []


async def test_count_tokens_is_held_to_the_same_policy(gateway, upstream):
    servers = [{"type": "url", "url": "https://mcp.example.com/sse", "name": "example"}]
    body = {"model": "native-model", "messages": ASK["messages"], "mcp_servers": servers}
    status, answer = await post(gateway.url, body, path="/v1/messages/count_tokens")
    assert status == 400
    assert answer["error"]["message"].startswith("mcp_servers: the field 'mcp_servers' is not allowed on this route")
    assert upstream.requests == []
    upstream.script({"json": {"input_tokens": 12}})
    status, answer = await post(
        gateway.url,
        {**body, "model": "wide-model"},
        path="/v1/messages/count_tokens",
        headers={"anthropic-beta": "mcp-client-2025-11-20"},
    )
    assert (status, answer) == (200, {"input_tokens": 12})
    assert upstream.requests[-1].body["mcp_servers"] == body["mcp_servers"]


async def test_translated_routes_carry_none_of_it(gateway, upstream):
    """An OpenAI-style upstream has no organisation resources of Anthropic's to reach:
    betas and compatibility fields are not sent, server tools and file sources are refused
    as features it cannot carry (as before the policy)."""
    status, answer = await post(gateway.url, {"model": "chat-model", **ASK, **ORG_SCOPED["image-file-source"][1]})
    assert status == 400 and "image source 'file' is not supported" in answer["error"]["message"]
    status, answer = await post(gateway.url, {"model": "chat-model", **ASK, **ORG_SCOPED["code-execution-tool"][1]})
    assert status == 400 and "tool type 'code_execution_20250825' is not supported" in answer["error"]["message"]
    assert upstream.requests == []
    status, _ = await post(
        gateway.url,
        {"model": "chat-model", **ASK, "container": "c", "mcp_servers": []},
        headers={"anthropic-beta": "files-api-2025-04-14"},
    )
    assert status == 200
    sent = upstream.requests[-1]
    assert "anthropic-beta" not in sent.headers
    assert "container" not in sent.body and "mcp_servers" not in sent.body


def searched_message(searches: int) -> dict:
    usage = {"input_tokens": 1000, "output_tokens": 100, "server_tool_use": {"web_search_requests": searches}}
    return native_message([{"type": "text", "text": "found it"}], usage=usage)


def searched_stream(searches: int) -> dict:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "upstream-native-model",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 1000, "output_tokens": 1},
    }
    events = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "found it"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 100, "server_tool_use": {"web_search_requests": searches}},
        },
        {"type": "message_stop"},
    ]
    return {"sse": [{"event": e["type"], "data": e} for e in events]}


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_web_searches_are_priced_into_the_cost_budget(gateway, upstream, stream):
    """1000 input and 100 output tokens cost $0.0015; four searches $0.04 more. The
    budget ($0.05) holds the first answer and admits a second, whose searches take it
    past the limit: the third is refused. Priced as tokens alone, it never would be."""
    upstream.script(*(searched_stream(4) if stream else searched_message(4) for _ in range(2)))
    search = [{"type": "web_search_20250305", "name": "web_search"}]
    async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key="budget-key", max_retries=0) as sdk:
        for _ in range(2):
            if stream:
                async with sdk.messages.stream(model="priced-model", tools=search, **ASK) as answer:
                    message = await answer.get_final_message()
            else:
                message = await sdk.messages.create(model="priced-model", tools=search, **ASK)
            assert message.usage.server_tool_use.web_search_requests == 4
            await gateway.settled()
        with pytest.raises(anthropic.RateLimitError) as refused:
            await sdk.messages.create(model="priced-model", tools=search, **ASK)
    assert "cost_per_month_usd" in refused.value.message
    limiter = gateway.app[RUNTIME].admission.limiter
    yesterday, tomorrow = (time.strftime("%Y-%m-%d", time.gmtime(time.time() + d)) for d in (-86400, 86400))
    rows = await limiter.usage("budget", yesterday, tomorrow)
    per_input, per_output, per_search = PRICES
    one = (1000 * per_input + 100 * per_output) / 1e6 + 4 * per_search / 1000
    assert sum(row["cost"] for row in rows) == pytest.approx(2 * one, abs=1e-9)
    assert sum(row["requests"] for row in rows) == 2


async def test_a_reload_applies_a_new_narrowing_at_once(upstream, tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(config(upstream.url))
    running = await start_gateway(path.read_text(), str(path))
    search = {"model": "wide-model", **ASK, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}
    try:
        upstream.script(native_message([{"type": "text", "text": "ok"}]))
        assert (await post(running.url, search))[0] == 200
        path.write_text(config(upstream.url, team_a="passthrough: {tools: [custom]}"))
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{running.url}/admin/reload", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
            ) as response:
                assert response.status == 200
        status, answer = await post(running.url, search)
        assert status == 400
        assert answer["error"]["message"].endswith("is not allowed for team 'team-a' (teams[].passthrough.tools)")
        assert len(upstream.requests) == 1
    finally:
        await running.runner.cleanup()
