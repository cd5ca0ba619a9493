"""A server that speaks the Messages API itself: requests pass through, nearly untouched.

What changes on the way up: the model name (the route's), the credentials (the
backend's, never the client's), `max_tokens` filled in or clamped, `temperature` capped
at 1 (the served API allows 2), `metadata` narrowed to `user_id`, and thinking blocks
without a signature (produced by translated backends in an earlier turn) dropped, since
the API refuses them. Every other field is forwarded as sent, once the backend's
`passthrough` policy (and the team's narrowing of it) let it through: the upstream
holds the operator's organisation key, and what reaches its stored resources (files,
containers, MCP servers) is refused unless allowed (`gateway/passthrough.py`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
from yarl import URL

from gateway.backends.base import (
    FORWARDED_ANTHROPIC_HEADERS,
    Deployment,
    StreamHandle,
    bad_answer,
    open_upstream_stream,
    post_json,
    read_error,
    with_max_tokens,
)
from gateway.backends.http_client import UpstreamClient
from gateway.backends.image_hosts import check_image_urls, rules_of
from gateway.config import AnthropicBackend
from gateway.errors import UpstreamProtocolError
from gateway.exchange import Exchange
from gateway.passthrough import BETA_HEADER, backend_policy
from gateway.passthrough import check as check_passthrough
from gateway.protocols.messages import MessagesRequest
from gateway.protocols.usage import clamped_usage
from gateway.translate.messages_native.relay import NativeRelay
from gateway.translate.upstream_errors import error_from_upstream


class AnthropicMessagesBackend:
    def __init__(self, name: str, config: AnthropicBackend, client: UpstreamClient) -> None:
        self.name = name
        self.config = config
        self.client = client
        self.messages_url = URL(f"{config.base_url}/v1/messages")
        self.count_url = URL(f"{config.base_url}/v1/messages/count_tokens")
        key = config.api_key.get_secret_value() if config.api_key else ""
        self.base_headers = {"content-type": "application/json", "accept": "application/json"}
        if key:
            self.base_headers["x-api-key"] = key
        self.base_headers.update(config.headers)
        self.passthrough = backend_policy(config.passthrough)
        self.image_rules = rules_of(config.image_url_guard) if config.image_url_guard is not None else None

    def upstream_headers(self, client_headers: dict[str, str]) -> dict[str, str]:
        headers = dict(self.base_headers)
        for name in FORWARDED_ANTHROPIC_HEADERS:
            value = client_headers.get(name)
            if value:
                headers[name] = value
        headers.setdefault("anthropic-version", self.config.anthropic_version)
        return headers

    async def screen(self, request: MessagesRequest, headers: dict[str, str], exchange: Exchange) -> None:
        """Refuse (400, naming it) what this backend must not pass on: what its policy or
        the team's narrowing does not let through, and URLs its server must not fetch."""
        team = exchange.team_passthrough
        policies = (self.passthrough,) if team is None else (self.passthrough, team)
        check_passthrough(request, headers.get(BETA_HEADER), policies)
        if self.image_rules is not None:
            await check_image_urls(request, self.image_rules, documents=True, timeout=self.config.timeouts.connect)

    def prepare(self, request: MessagesRequest, deployment: Deployment) -> MessagesRequest:
        body = with_max_tokens(request, deployment, deployment.default_max_tokens)
        body = {**body, "model": deployment.upstream_model}
        temperature = body.get("temperature")
        if isinstance(temperature, (int, float)) and temperature > 1:
            body["temperature"] = 1.0
        metadata = body.get("metadata")
        if isinstance(metadata, dict) and set(metadata) - {"user_id"}:
            narrowed = {k: v for k, v in metadata.items() if k == "user_id"}
            if narrowed:
                body["metadata"] = narrowed
            else:
                del body["metadata"]
        messages = _without_unsigned_thinking(body["messages"])
        if messages is not body["messages"]:
            body["messages"] = messages
        return body

    async def send(
        self, request: MessagesRequest, deployment: Deployment, headers: dict[str, str], exchange: Exchange
    ) -> Mapping[str, Any]:
        await self.screen(request, headers, exchange)
        body = self.prepare(request, deployment)
        started = time.perf_counter()
        try:
            answer = await post_json(
                self.client,
                self.messages_url,
                body,
                self.upstream_headers(headers),
                self.config.timeouts,
                self.name,
                max_body=self.config.max_response_bytes,
            )
        finally:
            exchange.upstream_seconds += time.perf_counter() - started
        if not isinstance(answer, dict) or answer.get("type") != "message":
            raise bad_answer(f"backend '{self.name}' answered with something that is not a message")
        answer["model"] = request["model"]
        if isinstance(answer.get("usage"), dict):  # the request is settled with it (`protocols/usage.py`)
            answer["usage"] = clamped_usage(answer["usage"])
        return answer

    async def open_stream(
        self, request: MessagesRequest, deployment: Deployment, headers: dict[str, str], exchange: Exchange
    ) -> StreamHandle:
        await self.screen(request, headers, exchange)
        body = self.prepare(request, deployment)
        upstream_headers = self.upstream_headers(headers)
        upstream_headers["accept"] = "text/event-stream"
        response = await open_upstream_stream(
            self.client,
            self.messages_url,
            orjson.dumps(body),
            upstream_headers,
            self.config.timeouts,
            self.name,
            exchange,
            max_body=self.config.max_response_bytes,
        )
        if response.status != 200:
            raise error_from_upstream(response.status, await read_error(response), response.headers)
        relay = NativeRelay(request["model"], max_event=self.config.max_event_bytes)
        return StreamHandle(response, relay, idle_timeout=self.config.timeouts.idle, backend=self.name)

    async def count_tokens(
        self, request: MessagesRequest, deployment: Deployment, headers: dict[str, str], exchange: Exchange
    ) -> dict:
        await self.screen(request, headers, exchange)
        body = {**request, "model": deployment.upstream_model}
        answer = await post_json(
            self.client,
            self.count_url,
            body,
            self.upstream_headers(headers),
            self.config.timeouts,
            self.name,
            max_body=self.config.max_response_bytes,
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("input_tokens"), int):
            raise UpstreamProtocolError(f"backend '{self.name}' answered count_tokens without input_tokens")
        return {"input_tokens": answer["input_tokens"]}


def _without_unsigned_thinking(messages: list) -> list:
    """Drop assistant thinking blocks with an empty signature; the same list when there are none."""

    def unsigned(block: object) -> bool:
        return isinstance(block, dict) and block.get("type") == "thinking" and not block.get("signature")

    if not any(
        m.get("role") == "assistant" and isinstance(m.get("content"), list) and any(unsigned(b) for b in m["content"])
        for m in messages
    ):
        return messages
    cleaned = []
    for message in messages:
        content = message.get("content")
        if message.get("role") == "assistant" and isinstance(content, list):
            kept = [b for b in content if not unsigned(b)]
            if not kept:
                continue  # nothing left to say; the API merges the user turns around it
            if len(kept) != len(content):
                message = {**message, "content": kept}
        cleaned.append(message)
    return cleaned
