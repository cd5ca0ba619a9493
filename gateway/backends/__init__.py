"""Backends by config `type`: one class per wire protocol; vendors are presets, not classes.

`BACKEND_TYPES` is the one registry of backend types: each entry pairs a type's settings
(a `BackendSettings` subclass in `gateway/config.py`, whose `type` Literal is the type's
name) with the class that serves it. Adding a type is its settings, its class, and one
entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gateway.backends.anthropic import AnthropicMessagesBackend
from gateway.backends.base import Backend, Deployment, StreamHandle
from gateway.backends.http_client import UpstreamClient
from gateway.backends.openai_chat import OpenAIChatBackend
from gateway.config import AnthropicBackend, BackendSettings, OpenAIBackend, type_name


@dataclass(frozen=True, slots=True)
class BackendType:
    """A backend `type` of the configuration: its settings and what serves them."""

    settings: type[BackendSettings]
    # Called with the backend's name, its settings (of the type above) and the shared client.
    implementation: Callable[[str, Any, UpstreamClient], Backend]

    @property
    def name(self) -> str:
        name = type_name(self.settings)
        if name is None:
            raise TypeError(f"{self.settings.__name__} names no backend type (a `type` Literal)")
        return name


def _registry(*types: BackendType) -> Mapping[str, BackendType]:
    by_name: dict[str, BackendType] = {}
    for backend_type in types:
        if backend_type.name in by_name:
            raise TypeError(f"backend type {backend_type.name!r} is registered twice")
        by_name[backend_type.name] = backend_type
    return MappingProxyType(by_name)


BACKEND_TYPES = _registry(
    BackendType(OpenAIBackend, OpenAIChatBackend), BackendType(AnthropicBackend, AnthropicMessagesBackend)
)


def build_backend(name: str, config: BackendSettings, client: UpstreamClient) -> Backend:
    return BACKEND_TYPES[config.type].implementation(name, config, client)


__all__ = ["BACKEND_TYPES", "Backend", "BackendType", "Deployment", "StreamHandle", "build_backend"]
