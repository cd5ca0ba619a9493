"""Reloading the configuration while serving: SIGHUP and `POST /admin/reload` swap the
routes at once, a bad file changes nothing, and no request in flight is dropped."""

from __future__ import annotations

import asyncio
import dataclasses
import signal

import aiohttp
import pytest

from gateway.runtime import RUNTIME
from tests.support.processes import start_gateway_process
from tests.support.replies import chat_message
from tests.support.servers import CLIENT_HEADERS, gateway_config, start_gateway

ADMIN = {"authorization": "Bearer admin-token-for-tests"}
NEW_MODEL = """
  - name: added-later
    routes: [{backend: chat, model: upstream-added}]
"""


def config_text(upstream_url: str, *, with_new_model: bool = False) -> str:
    text = "admin: {token: admin-token-for-tests}\n" + gateway_config(upstream_url)
    return text + NEW_MODEL if with_new_model else text


async def ask(http: aiohttp.ClientSession, url: str, model: str) -> int:
    body = {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(f"{url}/v1/messages", json=body, headers=CLIENT_HEADERS) as response:
        await response.read()
        return response.status


async def test_admin_reload_swaps_routes_and_refuses_bad_files(upstream, tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text(upstream.url))
    running = await start_gateway(path.read_text(), str(path))
    try:
        async with aiohttp.ClientSession() as http:
            assert await ask(http, running.url, "added-later") == 404
            path.write_text(config_text(upstream.url, with_new_model=True))
            async with http.post(f"{running.url}/admin/reload", headers=ADMIN) as response:
                assert response.status == 200
                assert (await response.json())["reloaded"] is True
            assert await ask(http, running.url, "added-later") == 200
            assert upstream.requests[-1].body["model"] == "upstream-added"

            path.write_text(
                config_text(upstream.url, with_new_model=True)
                + "  - name: broken\n    routes: [{backend: nope, model: x}]\n"
            )
            async with http.post(f"{running.url}/admin/reload", headers=ADMIN) as response:
                body = await response.json()
            assert response.status == 400
            assert "unknown backend 'nope'" in body["error"]["message"]
            assert await ask(http, running.url, "added-later") == 200  # the previous config still serves

            path.write_text("store: {type: redis, url: 'redis://127.0.0.1:1/0'}\n" + config_text(upstream.url))
            async with http.post(f"{running.url}/admin/reload", headers=ADMIN) as response:
                assert response.status == 400
                assert "store: changing it needs a restart" in (await response.json())["error"]["message"]
    finally:
        await running.runner.cleanup()


async def test_a_reload_swaps_the_routes_whole_and_leaves_the_taken_snapshot_as_it_was(upstream, tmp_path):
    """A request takes `Runtime.routes` once: a reload meanwhile builds a new snapshot
    (config, router, backends, pass-through) and leaves the one taken untouched, so the
    request's config and router always belong together."""
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text(upstream.url))
    running = await start_gateway(path.read_text(), str(path))
    try:
        runtime = running.app[RUNTIME]
        taken = runtime.routes
        path.write_text(config_text(upstream.url, with_new_model=True))
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{running.url}/admin/reload", headers=ADMIN) as response:
                assert response.status == 200
        now = runtime.routes
        assert now is not taken and runtime.config is now.config
        assert "added-later" in now.router.names() and "added-later" not in taken.router.names()
        added = now.router.resolve("added-later").primary
        assert added.backend is now.backends[added.backend_name]  # the router's backends are the snapshot's
        assert [m.name for m in taken.config.models] == [m.name for m in now.config.models][: len(taken.config.models)]
        with pytest.raises(dataclasses.FrozenInstanceError):
            taken.router = now.router  # type: ignore[misc]
    finally:
        await running.runner.cleanup()


async def test_reload_under_load_drops_no_request(upstream, tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text(upstream.url))
    running = await start_gateway(path.read_text(), str(path))
    try:
        upstream.script(*[{**chat_message("slow"), "delay": 0.05} for _ in range(200)])
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def reloads() -> None:
                for i in range(10):
                    path.write_text(config_text(upstream.url, with_new_model=bool(i % 2)))
                    async with http.post(f"{running.url}/admin/reload", headers=ADMIN) as response:
                        assert response.status == 200
                    await asyncio.sleep(0.02)

            results = await asyncio.gather(*(ask(http, running.url, "chat-model") for _ in range(200)), reloads())
        assert results[:200] == [200] * 200
    finally:
        await running.runner.cleanup()


async def test_sighup_reloads_a_running_process(upstream, tmp_path):
    process = await start_gateway_process(config_text(upstream.url), tmp_path)
    config = tmp_path / "gateway.yaml"
    try:
        async with aiohttp.ClientSession() as http:
            assert await ask(http, process.url, "added-later") == 404
            config.write_text(config_text(upstream.url, with_new_model=True))
            process.process.send_signal(signal.SIGHUP)
            for _ in range(100):
                if await ask(http, process.url, "added-later") == 200:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("SIGHUP did not reload the configuration")

            config.write_text("models: [{name: x, routes: [{backend: gone, model: y}]}]\n")
            process.process.send_signal(signal.SIGHUP)
            for _ in range(100):
                if "reload refused" in process.log.read_text():
                    break
                await asyncio.sleep(0.05)
            assert "unknown backend 'gone'" in process.log.read_text()
            assert await ask(http, process.url, "added-later") == 200
    finally:
        await process.stop()
