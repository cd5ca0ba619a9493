"""Real servers on free ports for integration tests: the gateway app and the fake upstream."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiohttp import web

from gateway.app import build_app
from gateway.config import parse
from gateway.fake_upstream import FakeUpstream
from gateway.runtime import RUNTIME


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    # handler_cancellation as `gateway serve` runs it: a client leaving cancels its handler.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@dataclass
class Running:
    url: str
    runner: web.AppRunner
    app: web.Application | None = None

    async def settled(self, timeout: float = 15.0) -> None:
        """Until no request is in flight in the gateway: a complete answer reaches the
        client before its metrics and access-log line are recorded, so a test that reads
        those right after an answer waits here rather than racing the recorder."""
        assert self.app is not None, "only an in-process gateway"
        deadline = time.monotonic() + timeout
        while self.app[RUNTIME].in_flight:
            assert time.monotonic() < deadline, f"{len(self.app[RUNTIME].in_flight)} requests still in flight"
            await asyncio.sleep(0.01)


async def start_upstream() -> tuple[FakeUpstream, Running]:
    fake = FakeUpstream()
    runner, url = await serve_app(fake.app())
    return fake, Running(url=url, runner=runner)


DEFAULT_TEAMS = """
  - id: team-a
    name: Team A
    keys:
      - {name: client, key: client-key}
      - {name: claude-code, key: sk-gw-test-key}
      - {name: chat-only, key: chat-only-key, models: [chat-*]}
      - {name: two-teams, key: two-teams-key, also_teams: [team-b]}
  - id: team-b
    name: Team B
    models: [native-*]
    keys:
      - {name: team-b, key: team-b-key}
"""


# Most tests script one upstream reply per request: no retries, no cooldowns, unless a
# test is about them.
NO_RETRIES = "{retries: 0, cooldown: {failures: 0}}"


def gateway_config(upstream_url: str, extra: str = "", *, teams: str = DEFAULT_TEAMS, routing: str = NO_RETRIES) -> str:
    """A config routing one model per backend kind and preset to the fake upstream.

    Keys of the default `teams`: `client-key` (team-a, every model) is what most tests
    send; the others are for the auth tests: `chat-only-key` narrows its models,
    `two-teams-key` belongs to team-a and team-b (which may use only `native-*`)."""
    return f"""
server: {{ping_interval: 0.2}}
routing: {routing}
teams:{teams}
backends:
  chat:
    type: openai
    base_url: {upstream_url}/v1
    api_key: upstream-chat-key
    preset: vllm
    timeouts: {{connect: 2, first_byte: 2, idle: 1, total: 30}}
  chat-tokenize:
    type: openai
    base_url: {upstream_url}/v1
    preset: vllm
    tokenize_url: {upstream_url}/tokenize
  openai:
    type: openai
    base_url: {upstream_url}/v1
    api_key: upstream-openai-key
    preset: openai
  native:
    type: anthropic
    base_url: {upstream_url}
    api_key: upstream-native-key
    timeouts: {{connect: 2, first_byte: 2, idle: 1, total: 30}}
models:
  - name: chat-model
    aliases: [chat-alias]
    routes: [{{backend: chat, model: upstream-chat-model}}]
  - name: tokenize-model
    routes: [{{backend: chat-tokenize, model: upstream-chat-model}}]
  - name: openai-model
    routes: [{{backend: openai, model: gpt-x, max_output_tokens: 16384}}]
  - name: native-model
    routes: [{{backend: native, model: upstream-native-model}}]
{extra}
"""


async def start_gateway(config_text: str, config_path: str | None = None) -> Running:
    """`config_path`: the file the config is (re)loaded from, for reload tests."""
    app = build_app(parse(config_text, env={}), config_path)
    runner, url = await serve_app(app)
    return Running(url=url, runner=runner, app=app)


# For tests that talk HTTP without the SDK.
CLIENT_HEADERS = {"x-api-key": "client-key"}
