"""A key revoked through one gateway process stops working in another within a second, with
both on a real Redis (their auth caches would otherwise trust the key for `cache_ttl`)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from gateway.runtime import RUNTIME
from tests.support.processes import start_gateway_process
from tests.support.servers import gateway_config, start_gateway

ASK = {"model": "chat-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def redis_config(upstream_url: str, redis_url: str) -> str:
    return f"store: {{type: redis, url: '{redis_url}'}}\nauth: {{cache_ttl: 30}}\n" + gateway_config(upstream_url)


async def status_of(http: aiohttp.ClientSession, url: str, key: str) -> int:
    async with http.post(f"{url}/v1/messages", json=ASK, headers={"x-api-key": key}) as response:
        return response.status


@pytest.fixture
async def second_process(upstream, redis_url, tmp_path):
    """A `gateway serve` process sharing the Redis, as another machine would."""
    process = await start_gateway_process(redis_config(upstream.url, redis_url), tmp_path)
    yield process.url
    await process.stop()


async def test_revocation_reaches_another_process_within_a_second(upstream, redis_url, second_process):
    first = await start_gateway(redis_config(upstream.url, redis_url))
    try:
        store = first.app[RUNTIME].store
        key = next(k for k in await store.list_keys() if k.name == "client")
        async with aiohttp.ClientSession() as http:
            # Both processes have the key in their caches (trusted for 30 s).
            assert await status_of(http, first.url, "client-key") == 200
            assert await status_of(http, second_process, "client-key") == 200
            await store.revoke_key(key.id, time.time())
            revoked = time.monotonic()
            while await status_of(http, second_process, "client-key") != 401:
                assert time.monotonic() - revoked < 1.0, "the other process still accepts a revoked key"
                await asyncio.sleep(0.02)
            assert await status_of(http, first.url, "client-key") == 401
    finally:
        await first.runner.cleanup()
