from __future__ import annotations

import anthropic
import pytest

from tests.support.servers import gateway_config, start_gateway, start_upstream


@pytest.fixture
async def upstream():
    fake, running = await start_upstream()
    fake.url = running.url
    yield fake
    await running.runner.cleanup()


@pytest.fixture
async def gateway(upstream):
    running = await start_gateway(gateway_config(upstream.url))
    yield running
    await running.runner.cleanup()


@pytest.fixture
async def client(gateway):
    async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key="client-key", max_retries=0) as sdk:
        yield sdk
