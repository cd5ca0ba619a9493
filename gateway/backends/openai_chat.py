"""A Chat Completions server as a Messages backend (OpenAI, Azure, vLLM, Ollama, Groq, DeepSeek, Together)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
from yarl import URL

from gateway.backends.base import (
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
from gateway.backends.presets import dialect_for
from gateway.config import OpenAIBackend
from gateway.errors import UpstreamProtocolError
from gateway.exchange import Exchange
from gateway.protocols.messages import MessagesRequest
from gateway.translate.estimate import estimate_input_tokens
from gateway.translate.messages_chat.relay import ChatRelay
from gateway.translate.messages_chat.request import ChatCall, to_chat_request
from gateway.translate.messages_chat.response import find_usage, from_chat_response, usage_from_chat
from gateway.translate.upstream_errors import error_from_upstream


class OpenAIChatBackend:
    def __init__(self, name: str, config: OpenAIBackend, client: UpstreamClient) -> None:
        self.name = name
        self.config = config
        self.client = client
        self.dialect = dialect_for(config.preset, config.options)
        self.url = URL(f"{config.base_url}/chat/completions")
        if config.api_version:
            self.url = self.url.update_query({"api-version": config.api_version})
        self.headers = self._headers()
        # Some servers refuse `stream_options` (older Ollama, LM Studio, TGI); learned on
        # the first refusal, then not sent again by this process.
        self.stream_usage = self.dialect.stream_usage
        self.image_rules = rules_of(config.image_url_guard)

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        key = self.config.api_key.get_secret_value() if self.config.api_key else ""
        if key:
            if self.config.preset == "azure":
                headers["api-key"] = key
            else:
                headers["authorization"] = f"Bearer {key}"
        headers.update(self.config.headers)
        return headers

    async def screen(self, request: MessagesRequest) -> None:
        """Refuse (400) image URLs the server must not be sent to fetch: it fetches them
        from where it runs, often inside the operator's network. A server that fetches no
        URLs is sent none (the translation refuses them), so there is nothing to check."""
        if self.dialect.image_urls:
            await check_image_urls(request, self.image_rules, documents=False, timeout=self.config.timeouts.connect)

    def prepare(self, request: MessagesRequest, deployment: Deployment) -> ChatCall:
        request = with_max_tokens(request, deployment, None)
        return to_chat_request(request, upstream_model=deployment.upstream_model, dialect=self.dialect)

    async def send(
        self, request: MessagesRequest, deployment: Deployment, headers: dict[str, str], exchange: Exchange
    ) -> Mapping[str, Any]:
        await self.screen(request)
        call = self.prepare(request, deployment)
        started = time.perf_counter()
        try:
            answer = await post_json(
                self.client,
                self.url,
                call.body,
                self.headers,
                self.config.timeouts,
                self.name,
                max_body=self.config.max_response_bytes,
            )
        finally:
            exchange.upstream_seconds += time.perf_counter() - started
        exchange.usage_estimated = isinstance(answer, dict) and usage_from_chat(find_usage(answer)) is None
        # The estimate stands in only for usage the server did not report.
        estimate = _input_estimate(request, exchange) if exchange.usage_estimated else 0
        try:
            return from_chat_response(answer, call, input_tokens=estimate)
        except UpstreamProtocolError as exc:
            raise bad_answer(exc) from None

    async def open_stream(
        self, request: MessagesRequest, deployment: Deployment, headers: dict[str, str], exchange: Exchange
    ) -> StreamHandle:
        await self.screen(request)
        call = self.prepare(request, deployment)
        body: Mapping[str, object] = call.body
        if not self.stream_usage:
            body = {k: v for k, v in body.items() if k != "stream_options"}
        response = await open_upstream_stream(
            self.client,
            self.url,
            orjson.dumps(body),
            self.headers,
            self.config.timeouts,
            self.name,
            exchange,
            max_body=self.config.max_response_bytes,
        )
        if response.status == 400 and "stream_options" in body:
            raw = await read_error(response)
            if b"stream_options" not in raw:
                raise error_from_upstream(400, raw, response.headers)
            self.stream_usage = False
            body = {k: v for k, v in body.items() if k != "stream_options"}
            response = await open_upstream_stream(
                self.client,
                self.url,
                orjson.dumps(body),
                self.headers,
                self.config.timeouts,
                self.name,
                exchange,
                max_body=self.config.max_response_bytes,
            )
        if response.status != 200:
            raise error_from_upstream(response.status, await read_error(response), response.headers)
        relay = ChatRelay(call, input_tokens=_input_estimate(request, exchange), max_event=self.config.max_event_bytes)
        return StreamHandle(response, relay, idle_timeout=self.config.timeouts.idle, backend=self.name)

    async def count_tokens(
        self, request: MessagesRequest, deployment: Deployment, headers: dict[str, str], exchange: Exchange
    ) -> dict:
        if not self.config.tokenize_url:
            return {"input_tokens": estimate_input_tokens(request)}
        await self.screen(request)  # a tokenizer of images fetches them too
        call = to_chat_request(request, upstream_model=deployment.upstream_model, dialect=self.dialect)
        payload = {"model": call.body["model"], "messages": call.body["messages"]}
        if "tools" in call.body:
            payload["tools"] = call.body["tools"]
        answer = await post_json(
            self.client,
            URL(self.config.tokenize_url),
            payload,
            self.headers,
            self.config.timeouts,
            self.name,
            max_body=self.config.max_response_bytes,
        )
        count = answer.get("count") if isinstance(answer, dict) else None
        if not isinstance(count, int):
            raise UpstreamProtocolError(f"backend '{self.name}' tokenizer answered without a count")
        return {"input_tokens": count}


def _input_estimate(request: MessagesRequest, exchange: Exchange) -> int:
    """The estimate the request path already made, or one now (a caller that made none)."""
    if exchange.input_estimate is None:
        exchange.input_estimate = estimate_input_tokens(request)
    return exchange.input_estimate
