"""Unauthenticated floods never reach Redis, and a slow Redis cannot hold the gateway.

The story: anyone can send `x-api-key: <anything>`. Every such request was a store round
trip (a key that cannot be one, or the same unknown key a million times, included), on a
connection pool without a cap or a timeout: a flood against a slow Redis opened
connections until Redis's `maxclients` refused the limiter's too, and a hung Redis hung
every request whose key was not cached.

Lookups are counted on the tests' own redis-server (`INFO commandstats`: the store's key
lookup is one EVALSHA, and nothing else sends one before admission), and connections by
a relay in front of it (`tests/support/tcp_proxy.py`).
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.identity import ApiKey, hash_key, shown_prefix
from gateway.runtime import RUNTIME
from tests.support.processes import start_gateway_process
from tests.support.redis_server import RedisServer
from tests.support.servers import gateway_config, start_gateway
from tests.support.tcp_proxy import TcpProxy

ASK = {"model": "chat-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
ADMIN = {"authorization": "Bearer admin-token-for-tests"}
WAIT = 15.0  # the longest a test waits for something it expects (never a fixed sleep)


def redis_config(upstream_url: str, redis_url: str, store: str = "", auth: str = "") -> str:
    return (
        f"store: {{type: redis, url: '{redis_url}'{store}}}\nauth: {{cache_ttl: 3600{auth}}}\n"
        "admin: {token: admin-token-for-tests}\n" + gateway_config(upstream_url)
    )


async def answer(http: aiohttp.ClientSession, url: str, key: str) -> tuple[int, dict]:
    async with http.post(f"{url}/v1/messages", json=ASK, headers={"x-api-key": key}) as response:
        return response.status, await response.json()


async def lookups(redis: Redis) -> int:
    return (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)


@pytest.fixture
async def raw_redis(redis_url):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


MALFORMED = {"too-long": "k" * 257, "space": "client key", "non-ascii": "clé-client-key"}


async def test_malformed_and_repeated_unknown_keys_never_reach_the_store(upstream, redis_url, raw_redis):
    running = await start_gateway(redis_config(upstream.url, redis_url))
    try:
        async with aiohttp.ClientSession() as http:
            await raw_redis.config_resetstat()
            for name, key in MALFORMED.items():
                status, body = await answer(http, running.url, key)
                assert (status, body["error"]["type"]) == (401, "authentication_error"), name
                assert "printable ASCII" in body["error"]["message"], name
            assert await lookups(raw_redis) == 0
            for _ in range(20):
                status, body = await answer(http, running.url, "unknown-key-0001")
                assert (status, body["error"]["message"]) == (401, "invalid API key")
            assert await lookups(raw_redis) == 1  # asked once; then the cache of unknown keys answers
            status, body = await answer(http, running.url, "k" * 256)  # the longest a key may be: looked up
            assert (status, body["error"]["message"], await lookups(raw_redis)) == (401, "invalid API key", 2)
            assert (await answer(http, running.url, "client-key"))[0] == 200
    finally:
        await running.runner.cleanup()
    assert upstream.requests and all("unknown-key" not in str(sent.headers) for sent in upstream.requests)


async def test_a_key_the_file_adds_works_at_once_after_it_was_refused(upstream, redis_url, tmp_path):
    path = tmp_path / "gateway.yaml"
    text = redis_config(upstream.url, redis_url, auth=", negative_cache_ttl: 3600")
    path.write_text(text)
    running = await start_gateway(text, str(path))
    try:
        async with aiohttp.ClientSession() as http:
            assert (await answer(http, running.url, "added-later-key"))[0] == 401  # now cached as unknown
            added = "      - {name: client, key: client-key}\n      - {name: new, key: added-later-key}\n"
            path.write_text(text.replace("      - {name: client, key: client-key}\n", added))
            async with http.post(f"{running.url}/admin/reload", headers=ADMIN) as response:
                assert response.status == 200, await response.text()
            assert (await answer(http, running.url, "added-later-key"))[0] == 200
    finally:
        await running.runner.cleanup()


async def test_another_process_forgets_an_unknown_key_once_it_is_created(upstream, redis_url, tmp_path):
    """The cache of unknown keys is per process; a new key reaches the others through the
    change feed that revocations already use."""
    other = await start_gateway_process(
        redis_config(upstream.url, redis_url, auth=", negative_cache_ttl: 3600"), tmp_path
    )
    first = await start_gateway(redis_config(upstream.url, redis_url))
    raw = "made-elsewhere-key"
    try:
        async with aiohttp.ClientSession() as http:
            assert (await answer(http, other.url, raw))[0] == 401
            assert (await answer(http, other.url, raw))[0] == 401  # from its cache now
            await first.app[RUNTIME].store.create_key(
                ApiKey(
                    id="key_made_elsewhere",
                    prefix=shown_prefix(raw),
                    hash=hash_key(raw),
                    teams=("team-a",),
                    default_team="team-a",
                    created_at=time.time(),
                )
            )
            deadline = time.monotonic() + WAIT
            while (await answer(http, other.url, raw))[0] != 200:
                assert time.monotonic() < deadline, "the other process still refuses a key that exists"
                await asyncio.sleep(0.02)
    finally:
        await first.runner.cleanup()
        await other.stop()


async def test_a_hung_store_is_a_529_not_a_hang(upstream):
    with RedisServer() as server:
        running = await start_gateway(redis_config(upstream.url, server.url, store=", socket_timeout: 0.5"))
        try:
            async with aiohttp.ClientSession() as http:
                assert (await answer(http, running.url, "client-key"))[0] == 200
                server.pause()
                try:
                    # A key this process has not cached: its lookup meets the hung server.
                    status, body = await asyncio.wait_for(answer(http, running.url, "chat-only-key"), WAIT)
                finally:
                    server.resume()
                assert (status, body["error"]["type"]) == (529, "overloaded_error")
                assert "key store" in body["error"]["message"]
                assert (await answer(http, running.url, "chat-only-key"))[0] == 200  # and it recovers by itself
        finally:
            server.resume()
            await running.runner.cleanup()


async def test_a_flood_of_unknown_keys_holds_at_most_max_connections(upstream, redis_server):
    """Sixty distinct unknown keys at once against a Redis that answers slowly: without a
    cap, each lookup opened a connection of its own."""
    redis_server.flushall()
    proxy = await TcpProxy(redis_server.port, answer_delay=0.05).start()
    running = await start_gateway(
        redis_config(upstream.url, proxy.url, store=", max_connections: 3, socket_timeout: 5")
    )
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            assert (await answer(http, running.url, "client-key"))[0] == 200
            before = proxy.open
            proxy.reset_peak()
            answers = await asyncio.gather(*(answer(http, running.url, f"flood-key-{i:04d}") for i in range(60)))
        assert [status for status, _ in answers] == [401] * 60
        assert proxy.peak - before <= 3, f"{proxy.peak - before} connections opened for the flood"
    finally:
        await running.runner.cleanup()
        await proxy.close()
