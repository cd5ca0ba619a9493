"""A rotated-out key stops at the end of its grace period, not up to `auth.cache_ttl` later.

The story: a key rotated with `grace_seconds: 60` kept working as long as the process's
cache trusted it (`cache_ttl`: an hour here), and under `limits.on_store_error: fail_open`
with Redis down, for as long as the outage lasted. The store says when a rotated-out hash
runs out; the cached entry carries that time and every request is checked against it.

No timing is asserted: each test waits, with a deadline, for the old key to be refused,
and checks it was refused for the end of its grace (the message) and no earlier than it.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.support.redis_server import RedisServer
from tests.support.servers import gateway_config, start_gateway

ASK = {"model": "chat-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
ADMIN = {"authorization": "Bearer admin-token-for-tests"}
GRACE = 3.0
WAIT = GRACE + 30.0
GRACE_OVER = "this API key was replaced by a rotation and its grace period is over"


def config_text(
    upstream_url: str, store: str = "", *, cache_ttl: float = 3600, on_store_error: str = "fail_closed"
) -> str:
    return (
        f"{store}auth: {{cache_ttl: {cache_ttl}}}\nlimits: {{on_store_error: {on_store_error}}}\n"
        "admin: {token: admin-token-for-tests}\n" + gateway_config(upstream_url)
    )


async def answer(http: aiohttp.ClientSession, url: str, key: str) -> tuple[int, dict]:
    async with http.post(f"{url}/v1/messages", json=ASK, headers={"x-api-key": key}) as response:
        return response.status, await response.json()


async def admin(http: aiohttp.ClientSession, url: str, path: str, body: dict) -> dict:
    async with http.post(f"{url}/admin{path}", json=body, headers=ADMIN) as response:
        assert response.status in (200, 201), await response.text()
        return await response.json()


async def rotated(http: aiohttp.ClientSession, url: str) -> tuple[str, str, float]:
    """A key made, used (so it is cached), then rotated with GRACE: (old, new, grace end)."""
    made = await admin(http, url, "/keys", {"teams": ["team-a"]})
    assert (await answer(http, url, made["key"]))[0] == 200
    rotation = await admin(http, url, f"/keys/{made['id']}/rotate", {"grace_seconds": GRACE})
    return made["key"], rotation["key"], rotation["previous_key_expires_at"]


async def refused_in_the_end(http: aiohttp.ClientSession, url: str, key: str) -> tuple[dict, float]:
    """Asks with `key` until it is refused (within WAIT): the refusal, and when it came."""
    deadline = time.monotonic() + WAIT
    while True:
        status, body = await answer(http, url, key)
        if status == 401:
            return body, time.time()
        assert status == 200, body
        assert time.monotonic() < deadline, "the rotated-out key still works long after its grace ended"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_the_old_key_stops_at_the_end_of_its_grace_although_cached(upstream, request, store):
    store_line = "" if store == "memory" else f"store: {{type: redis, url: '{request.getfixturevalue('redis_url')}'}}\n"
    running = await start_gateway(config_text(upstream.url, store_line))
    try:
        async with aiohttp.ClientSession() as http:
            old, new, grace_end = await rotated(http, running.url)
            body, refused_at = await refused_in_the_end(http, running.url, old)
            # Refused from the cache (the store was not asked again: the cache trusts it
            # for an hour), for its grace's end, which had come.
            assert body["error"]["message"] == GRACE_OVER
            assert refused_at >= grace_end
            assert (await answer(http, running.url, new))[0] == 200
    finally:
        await running.runner.cleanup()


async def test_fail_open_with_the_store_down_still_ends_the_grace(upstream):
    """The store unreachable and `fail_open`: known keys are served from what the process
    cached, and a rotated-out one only until its grace ends."""
    with RedisServer() as server:
        store_line = f"store: {{type: redis, url: '{server.url}', socket_timeout: 0.5}}\n"
        # A short cache_ttl: every request goes to the store, fails, and falls back to the
        # stale entry (the path that served a rotated-out key for as long as the outage lasted).
        running = await start_gateway(config_text(upstream.url, store_line, cache_ttl=0.1, on_store_error="fail_open"))
        try:
            async with aiohttp.ClientSession() as http:
                old, new, grace_end = await rotated(http, running.url)
                assert (await answer(http, running.url, old))[0] == 200  # both cached, as of now
                assert (await answer(http, running.url, new))[0] == 200
                server.kill()
                body, refused_at = await refused_in_the_end(http, running.url, old)
                assert body["error"]["message"] == GRACE_OVER and refused_at >= grace_end
                status, _ = await answer(http, running.url, new)
                assert status == 200  # the policy still serves the key it knew
        finally:
            await running.runner.cleanup()
