"""The contracts every backend type keeps, checked for each type in the registry
(`gateway/backends/__init__.py`) against the scripted upstream over real HTTP.

- The registry is the one list of backend types: the configuration accepts exactly the
  types it registers, each with the settings it pairs, and names each once.
- `open_stream` returns a `StreamHandle` that carries what the pump needs of the backend
  (its configured idle timeout, its name) with a response and the relay for its bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.backends import BACKEND_TYPES, BackendType, StreamHandle, _registry, build_backend
from gateway.backends.base import Deployment
from gateway.backends.http_client import UpstreamClient
from gateway.config import Config, ConfigError, RouteConfig, backend_types, parse
from gateway.exchange import Exchange
from gateway.protocols.sse import SseDecoder

# One backend of each registered type, each with an idle timeout of its own.
IDLE = {"openai": 7.5, "anthropic": 12.25}
ASK = {"model": "client-model", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def one_of_each(url: str) -> Config:
    backends = "".join(
        f"  {name}:\n    type: {name}\n    base_url: {url}{'/v1' if name == 'openai' else ''}\n"
        f"    timeouts: {{idle: {IDLE[name]}}}\n"
        for name in BACKEND_TYPES
    )
    models = "".join(f"  - name: via-{name}\n    routes: [{{backend: {name}, model: up}}]\n" for name in BACKEND_TYPES)
    return parse(f"backends:\n{backends}models:\n{models}", env={})


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    made = UpstreamClient()
    yield made
    await made.close()


def test_the_configuration_accepts_exactly_the_registered_types() -> None:
    assert set(backend_types()) == set(BACKEND_TYPES) == set(IDLE)
    for name, registered in BACKEND_TYPES.items():
        assert registered.name == name
        assert backend_types()[name] is registered.settings


def test_an_unknown_type_names_every_registered_one() -> None:
    with pytest.raises(ConfigError) as refused:
        parse("backends:\n  x: {type: bedrock, base_url: 'https://x.example'}\n", env={})
    known = ", ".join(sorted(BACKEND_TYPES))
    assert f"backends.x.type: unknown backend type 'bedrock' (expected one of: {known})" in refused.value.problems


def test_a_type_registered_twice_is_refused() -> None:
    openai = BACKEND_TYPES["openai"]
    with pytest.raises(TypeError, match="'openai' is registered twice"):
        _registry(openai, BackendType(openai.settings, BACKEND_TYPES["anthropic"].implementation))


async def test_each_type_builds_its_implementation(upstream, client: UpstreamClient) -> None:
    config = one_of_each(upstream.url)
    for name, registered in BACKEND_TYPES.items():
        backend = build_backend(name, config.backends[name], client)
        assert isinstance(backend, registered.implementation) and backend.name == name


@pytest.mark.parametrize("name", sorted(BACKEND_TYPES))
async def test_open_stream_hands_the_pump_what_it_needs(upstream, client: UpstreamClient, name: str) -> None:
    config = one_of_each(upstream.url)
    backend = build_backend(name, config.backends[name], client)
    deployment = Deployment(backend, "up", RouteConfig(backend=name, model="up"), default_max_tokens=100)
    handle = await backend.open_stream(ASK, deployment, {}, Exchange())
    try:
        assert isinstance(handle, StreamHandle)
        assert handle.idle_timeout == IDLE[name] == config.backends[name].timeouts.idle
        assert handle.backend == name
        assert handle.response.status == 200
        # The relay is the one for this response's bytes: they become a whole Messages stream.
        relay = handle.relay
        out = relay.start() + relay.feed(await handle.response.read()) + relay.end()
    finally:
        handle.response.close()
    decoder = SseDecoder()
    kinds = [event.event for event in decoder.feed(out) + decoder.flush()]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
    assert relay.finished and relay.failure is None and relay.has_content
