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
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.processes import GatewayProcess, free_port, start_gateway_process
from tests.support.redis_cluster import LocalRedisCluster, cluster_url_fixture, redis_cluster_fixture  # noqa: F401
from tests.support.redis_process import RedisProcess, missing_binaries
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


def _certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    files = {
        name: directory / name for name in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt", "san.ext")
    }
    files["san.ext"].write_text("subjectAltName=IP:127.0.0.1\n")
    steps = [
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            files["ca.key"],
            "-out",
            files["ca.crt"],
            "-days",
            "1",
            "-subj",
            "/CN=gateway-test-ca",
        ],
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            files["server.key"],
            "-out",
            files["server.csr"],
            "-subj",
            "/CN=127.0.0.1",
        ],
        [
            "x509",
            "-req",
            "-in",
            files["server.csr"],
            "-CA",
            files["ca.crt"],
            "-CAkey",
            files["ca.key"],
            "-CAcreateserial",
            "-out",
            files["server.crt"],
            "-days",
            "1",
            "-extfile",
            files["san.ext"],
        ],
    ]
    for step in steps:
        subprocess.run(["openssl", *map(str, step)], check=True, capture_output=True)
    return files


@pytest.fixture
def tls_redis(tmp_path) -> Iterator[tuple[int, Path, str]]:
    """A redis-server that speaks TLS (and needs a password) on one port: (port, CA file, password)."""
    reason = missing_binaries("redis-server", "openssl")
    if reason is not None:
        pytest.skip(reason)
    files = _certificates(tmp_path)
    password, tls_port = "tls-secret-7d2e", free_port()
    server = RedisProcess(
        tmp_path,
        free_port(),
        password=password,
        options={
            "tls-port": str(tls_port),
            "tls-cert-file": str(files["server.crt"]),
            "tls-key-file": str(files["server.key"]),
            "tls-ca-cert-file": str(files["ca.crt"]),
            "tls-auth-clients": "no",
            "requirepass": password,
        },
    )
    try:
        server.start()
    except RuntimeError as exc:
        if "TLS" in str(exc) or "tls" in str(exc):
            pytest.skip(f"this redis-server has no TLS: {exc}")
        raise
    try:
        yield tls_port, files["ca.crt"], password
    finally:
        server.stop()


async def test_served_over_tls_with_the_password_from_the_environment(upstream, tls_redis, tmp_path):
    port, ca_file, password = tls_redis
    store = (
        "store:\n  type: redis\n"
        f"  url: 'rediss://127.0.0.1:{port}/0'\n  password: ${{REDIS_PASSWORD}}\n  tls_ca_file: '{ca_file}'\n"
    )
    gateway = await serve(upstream.url, store, {"REDIS_PASSWORD": password}, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            # Store, change feed and the limiter's own connection, all over TLS.
            await served_limited_then_revoked(http, gateway.url, "tls")
    finally:
        await gateway.stop()
    assert password not in gateway.log.read_text()
