"""A key revoked through one gateway process stops working in another within a second, with
both on a real Redis (their auth caches would otherwise trust the key for `cache_ttl`)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.keys import RUNTIME
from tests.support.servers import gateway_config, start_gateway

ROOT = Path(__file__).parent.parent.parent
ASK = {"model": "chat-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_config(upstream_url: str, redis_url: str, port: int = 0) -> str:
    extra = f"store: {{type: redis, url: '{redis_url}'}}\nauth: {{cache_ttl: 30}}\n"
    if port:
        extra += f"server: {{port: {port}}}\n"
    return extra + gateway_config(upstream_url).replace("server: {ping_interval: 0.2}\n", "")


async def status_of(http: aiohttp.ClientSession, url: str, key: str) -> int:
    async with http.post(f"{url}/v1/messages", json=ASK, headers={"x-api-key": key}) as response:
        return response.status


@pytest.fixture
async def second_process(upstream, redis_url, tmp_path):
    """A `gateway serve` process sharing the Redis, as another machine would."""
    port = free_port()
    (tmp_path / "config.yaml").write_text(redis_config(upstream.url, redis_url, port))
    log = (tmp_path / "gateway.log").open("w")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(tmp_path / "config.yaml"),
        cwd=ROOT, stdout=log, stderr=log, env={**os.environ},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        if "gateway listening on" in (tmp_path / "gateway.log").read_text():
            break
        await asyncio.sleep(0.1)
    yield url
    process.terminate()
    await process.wait()
    log.close()


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
