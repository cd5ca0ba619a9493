"""`gateway serve` on Redis Cluster and on Redis Sentinel, configured as an operator would:
the store section names the nodes or the sentinels, the passwords come from the
environment. A team and a key made through the admin API (so authentication reads them
from the store) are served, limited exactly, and refused once the key is revoked, within
a second (the change feed: the auth cache would trust the key for 30 s). With Sentinel
the master then fails over, and the same process goes on without a restart.

(The one-server shape is what every other Redis test runs on; the rate-limit exactness
over two processes on the cluster is in test_limits.py.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.processes import GatewayProcess, start_gateway_process
from tests.support.redis_cluster import LocalRedisCluster, cluster_url_fixture, redis_cluster_fixture  # noqa: F401
from tests.support.redis_process import missing_binaries
from tests.support.redis_sentinel import SERVICE, LocalSentinel
from tests.support.servers import gateway_config

ASK = {"model": "chat-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
ADMIN = {"authorization": "Bearer admin-token-0001"}


def served_config(upstream_url: str, store: str) -> str:
    return (
        store + "admin: {token: admin-token-0001}\nauth: {cache_ttl: 30}\n" + gateway_config(upstream_url, teams=" []")
    )


@pytest.fixture
def sentinel() -> Iterator[LocalSentinel]:
    reason = missing_binaries("redis-server")
    if reason is not None:
        pytest.skip(reason)
    with LocalSentinel() as started:
        yield started


async def serve(upstream_url: str, store: str, env: dict[str, str], directory: Path) -> GatewayProcess:
    return await start_gateway_process(served_config(upstream_url, store), directory, env=env)


async def status_of(http: aiohttp.ClientSession, url: str, key: str) -> tuple[int, bytes]:
    async with http.post(f"{url}/v1/messages", json=ASK, headers={"x-api-key": key}) as response:
        return response.status, await response.read()


async def admin(http: aiohttp.ClientSession, url: str, path: str, body: dict | None = None) -> dict:
    async with http.post(f"{url}/admin/{path}", json=body or {}, headers=ADMIN) as response:
        assert response.status in (200, 201), (path, response.status, await response.text())
        return await response.json()


async def new_key(http: aiohttp.ClientSession, url: str, team: str, rpm: int) -> dict:
    await admin(http, url, "teams", {"id": team, "limits": {"requests_per_minute": rpm}})
    return await admin(http, url, "keys", {"teams": [team], "name": "shape"})


async def ready(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(f"{url}/readyz") as response:
        return response.status


async def served_limited_then_revoked(http: aiohttp.ClientSession, url: str, team: str) -> None:
    assert await ready(http, url) == 200
    made = await new_key(http, url, team, rpm=3)
    statuses = [(await status_of(http, url, made["key"]))[0] for _ in range(3)]
    assert statuses == [200, 200, 200]
    status, body = await status_of(http, url, made["key"])
    assert status == 429 and b"requests_per_minute" in body
    await admin(http, url, f"keys/{made['id']}/revoke")
    revoked = time.monotonic()
    while (await status_of(http, url, made["key"]))[0] != 401:
        assert time.monotonic() - revoked < 1.0, "a revoked key is still accepted"
        await asyncio.sleep(0.02)


async def test_served_through_a_cluster(upstream, redis_cluster: LocalRedisCluster, cluster_url: str, tmp_path):
    store = (
        "store:\n  type: redis\n  mode: cluster\n"
        f"  nodes: [{', '.join(redis_cluster.addresses[1:])}]\n"
        "  password: ${REDIS_PASSWORD}\n"
    )
    gateway = await serve(upstream.url, store, {"REDIS_PASSWORD": redis_cluster.password}, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            await served_limited_then_revoked(http, gateway.url, "shapes")
    finally:
        await gateway.stop()
    # The team's limiter keys live on their own master, the store's on another.
    assert any(name.startswith("{gw:t:shapes}:") for node in range(3) for name in redis_cluster.keys(node))


async def test_served_through_sentinel_and_after_a_failover(upstream, sentinel: LocalSentinel, tmp_path):
    store = (
        "store:\n  type: redis\n  mode: sentinel\n"
        f"  sentinels: ['{sentinel.address}']\n  service: {SERVICE}\n"
        "  password: ${REDIS_PASSWORD}\n  sentinel_password: ${SENTINEL_PASSWORD}\n"
    )
    env = {"REDIS_PASSWORD": sentinel.password, "SENTINEL_PASSWORD": sentinel.sentinel_password}
    gateway = await serve(upstream.url, store, env, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            await served_limited_then_revoked(http, gateway.url, "before")
            first_master = sentinel.master_port()
            await asyncio.to_thread(sentinel.failover)
            assert sentinel.master_port() != first_master
            # A write to the store and admissions on the new master, no restart: the
            # connections to the old one fail (it is a replica now) and are made again.
            await served_limited_then_revoked(http, gateway.url, "after")
    finally:
        await gateway.stop()
    log = gateway.log.read_text()
    assert sentinel.password not in log and sentinel.sentinel_password not in log
