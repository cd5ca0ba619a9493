"""Keys the YAML declares belong to it, across restarts and reloads, on both stores.

The story: the README's rotation was followed (start with `CI_KEY=A`, stop, start with
`CI_KEY=B`) and key A kept answering 200, for ever: each load added B's record and never
looked back. Each load also re-wrote the declared records whole, so an `expires_at` set
through the admin API was wiped, and models or limits narrowed there came back.

Now a key the file no longer declares is revoked at the next load, a new value under the
same name replaces the old one at once (the same record, rotated without grace), the admin
API refuses to change what the file declares (409, naming the file) and may set what it
does not (`expires_at`, which then survives every load), and keys made through the API
are never touched. `auth.cache_ttl` is an hour here: what stops the old keys is the load,
not a cache running out.
"""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway import accounts
from gateway.config import parse
from gateway.identity import ApiKey, Team, hash_key, key_id_for_hash
from gateway.store.redis import RedisStore
from tests.support.processes import start_gateway_process
from tests.support.servers import Running, gateway_config, start_gateway

ASK = {"model": "chat-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
ADMIN = {"authorization": "Bearer admin-token-for-tests"}
EXPIRES = 4102444800.0  # 2100-01-01: an expiry set by an operator
WAIT = 15.0


def config_text(upstream_url: str, store_line: str, ci_key: str, *, retiring: bool = True) -> str:
    teams = f"""
  - id: team-a
    keys:
      - {{name: ci, key: {ci_key}}}
""" + ("      - {name: retiring, key: retiring-key-01}\n" if retiring else "")
    return f"{store_line}auth: {{cache_ttl: 3600}}\nadmin: {{token: admin-token-for-tests}}\n" + gateway_config(
        upstream_url, teams=teams
    )


async def answer(http: aiohttp.ClientSession, url: str, key: str) -> tuple[int, str]:
    async with http.post(f"{url}/v1/messages", json=ASK, headers={"x-api-key": key}) as response:
        body = await response.json()
        return response.status, body["error"]["message"] if response.status != 200 else ""


async def call(
    http: aiohttp.ClientSession, url: str, method: str, path: str, body: dict | None = None
) -> tuple[int, dict]:
    async with http.request(method, f"{url}/admin{path}", json=body, headers=ADMIN) as response:
        return response.status, await response.json()


async def key_named(http: aiohttp.ClientSession, url: str, name: str) -> dict:
    status, listing = await call(http, url, "GET", "/keys")
    assert status == 200
    return next(key for key in listing["data"] if key["name"] == name and key["status"] != "revoked")


def store_line(kind: str, request: pytest.FixtureRequest) -> str:
    return "" if kind == "memory" else f"store: {{type: redis, url: '{request.getfixturevalue('redis_url')}'}}\n"


@pytest.mark.parametrize("load", ["restart", "reload"])
@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_the_file_owns_the_keys_it_declares(upstream, tmp_path, request, kind, load):
    path = tmp_path / "gateway.yaml"
    line = store_line(kind, request)
    path.write_text(config_text(upstream.url, line, "ci-value-A"))
    running = await start_gateway(path.read_text(), str(path))
    # The memory store lives in the process: a restart starts it empty.
    persists = not (kind == "memory" and load == "restart")
    try:
        async with aiohttp.ClientSession() as http:
            assert await answer(http, running.url, "ci-value-A") == (200, "")
            assert await answer(http, running.url, "retiring-key-01") == (200, "")
            status, made = await call(
                http, running.url, "POST", "/keys", {"teams": ["team-a"], "name": "an operator's"}
            )
            assert status == 201
            ci = await key_named(http, running.url, "ci")
            assert ci["managed_by"] == "config" and made["managed_by"] is None

            # What the file declares is refused, naming the file; what it does not is allowed.
            for method, target, body in [
                ("PATCH", f"/keys/{ci['id']}", {"models": ["chat-*"]}),
                ("PATCH", f"/keys/{ci['id']}", {"limits": {"requests_per_minute": 1}, "expires_at": EXPIRES}),
                ("POST", f"/keys/{ci['id']}/rotate", {"grace_seconds": 0}),
                ("PATCH", "/teams/team-a", {"models": ["chat-*"]}),
                ("DELETE", "/teams/team-a", None),
            ]:
                status, refusal = await call(http, running.url, method, target, body)
                assert status == 409, (method, target, refusal)
                assert f"is declared in {path}" in refusal["error"]["message"], refusal
            status, changed = await call(http, running.url, "PATCH", f"/keys/{ci['id']}", {"expires_at": EXPIRES})
            assert (status, changed["expires_at"]) == (200, EXPIRES)
            status, _ = await call(http, running.url, "PATCH", f"/keys/{made['id']}", {"models": ["chat-*"]})
            assert status == 200  # the operator's own key is the operator's

            path.write_text(config_text(upstream.url, line, "ci-value-B", retiring=False))
            if load == "reload":
                status, reloaded = await call(http, running.url, "POST", "/reload")
                assert status == 200, reloaded
            else:
                await running.runner.cleanup()
                running = await start_gateway(path.read_text(), str(path))

            assert await answer(http, running.url, "ci-value-A") == (401, "invalid API key")  # replaced: no grace
            assert await answer(http, running.url, "ci-value-B") == (200, "")
            assert (await answer(http, running.url, "retiring-key-01"))[0] == 401
            if not persists:
                return
            assert await answer(http, running.url, "retiring-key-01") == (401, "this API key has been revoked")
            assert await answer(http, running.url, made["key"]) == (200, "")
            status, now_ci = await call(http, running.url, "GET", f"/keys/{ci['id']}")
            # The same record, rotated, with the operator's expiry kept.
            assert (now_ci["status"], now_ci["expires_at"], now_ci["managed_by"]) == ("active", EXPIRES, "config")
            assert now_ci["rotated_at"] is not None and now_ci["prefix"] == "ci-value-B"[:9]
            status, now_made = await call(http, running.url, "GET", f"/keys/{made['id']}")
            assert (now_made["status"], now_made["models"]) == ("active", ["chat-*"])
    finally:
        await running.runner.cleanup()


async def test_sighup_retires_what_the_file_no_longer_declares(upstream, redis_url, tmp_path):
    line = f"store: {{type: redis, url: '{redis_url}'}}\n"
    process = await start_gateway_process(config_text(upstream.url, line, "ci-value-A"), tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            assert (await answer(http, process.url, "ci-value-A"))[0] == 200  # cached for an hour
            assert (await answer(http, process.url, "retiring-key-01"))[0] == 200
            (tmp_path / "gateway.yaml").write_text(config_text(upstream.url, line, "ci-value-B", retiring=False))
            process.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + WAIT
            while (await answer(http, process.url, "ci-value-B"))[0] != 200:
                assert time.monotonic() < deadline, "SIGHUP did not load the new key"
                await asyncio.sleep(0.05)
            assert await answer(http, process.url, "ci-value-A") == (401, "invalid API key")
            assert await answer(http, process.url, "retiring-key-01") == (401, "this API key has been revoked")
    finally:
        await process.stop()


async def test_records_an_earlier_version_stored_still_load(upstream, redis_url):
    """Before owners were recorded, the file's keys were stored with no marker, under ids
    made from their hashes. Such records load; the one the file still declares becomes the
    file's, the one it no longer declares is revoked, and an operator's is left alone."""
    legacy = RedisStore(Redis.from_url(redis_url))
    raw = Redis.from_url(redis_url)
    try:
        await legacy.put_team(Team(id="team-a", name="Team A", created_at=1.0))
        for value in ("ci-value-A", "retiring-key-01"):
            digest = hash_key(value)
            await legacy.put_key(
                ApiKey(
                    id=key_id_for_hash(digest),
                    prefix=value[:9],
                    hash=digest,
                    teams=("team-a",),
                    default_team="team-a",
                    created_at=1.0,
                )
            )
        made, made_key = await accounts.create_key(legacy, ["team-a"], name="an operator's")
        stored = await raw.get("{gw}:key:" + key_id_for_hash(hash_key("ci-value-A")))
        assert b"managed_by" not in stored and b"managed_by" not in await raw.get("{gw}:team:team-a")  # as it was

        line = f"store: {{type: redis, url: '{redis_url}'}}\n"
        running: Running = await start_gateway(config_text(upstream.url, line, "ci-value-A", retiring=False))
        try:
            async with aiohttp.ClientSession() as http:
                assert await answer(http, running.url, "ci-value-A") == (200, "")
                assert await answer(http, running.url, "retiring-key-01") == (401, "this API key has been revoked")
                assert await answer(http, running.url, made_key) == (200, "")
        finally:
            await running.runner.cleanup()
        adopted = await legacy.get_key(key_id_for_hash(hash_key("ci-value-A")))
        assert (adopted.managed_by, adopted.name, adopted.created_at) == ("config", "ci", 1.0)
        assert (await legacy.get_team("team-a")).managed_by == "config"
        assert (await legacy.get_key(made.id)).revoked_at is None
    finally:
        await raw.aclose()
        await legacy.close()


async def test_every_process_loading_a_new_value_at_once_agrees(redis_url):
    """Each worker runs the load at start: on one Redis, all at once, they leave one record
    with the new value, and nothing else revoked or made twice."""
    stores = [RedisStore(Redis.from_url(redis_url)) for _ in range(4)]

    def teams(ci_key: str):
        return parse(config_text("http://127.0.0.1:1", "", ci_key), env={}).teams

    try:
        await accounts.bootstrap(stores[0], teams("ci-value-A"))
        await asyncio.gather(*(accounts.bootstrap(store, teams("ci-value-B")) for store in stores))
        keys = await stores[0].list_keys()
        assert sorted(key.name for key in keys) == ["ci", "retiring"]
        assert all(key.revoked_at is None for key in keys)
        assert await stores[0].find_key(hash_key("ci-value-A")) is None
        assert (await stores[0].find_key(hash_key("ci-value-B"))).key.name == "ci"
    finally:
        for store in stores:
            await store.close()
