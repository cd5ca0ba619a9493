"""Backends by config `type`: one class per wire protocol; vendors are presets, not classes."""

from __future__ import annotations

from gateway.backends.anthropic import AnthropicMessagesBackend
from gateway.backends.base import Backend, Deployment
from gateway.backends.http_client import UpstreamClient
from gateway.backends.openai_chat import OpenAIChatBackend
from gateway.config import BackendConfig

BACKENDS: dict[str, type] = {
    OpenAIChatBackend.kind: OpenAIChatBackend,
    AnthropicMessagesBackend.kind: AnthropicMessagesBackend,
}


def build_backend(name: str, config: BackendConfig, client: UpstreamClient) -> Backend:
    return BACKENDS[config.type](name, config, client)


__all__ = ["BACKENDS", "Backend", "Deployment", "build_backend"]
