"""deploy/compose.yaml's topology without Docker: its gateway config (gateway.compose.yaml)
served by two `gateway serve` processes sharing one redis-server, with the fake upstream,
compose's service names pointed at this machine and its environment's defaults. A key made
through one replica's admin API answers on the other at once, both serve the demo models
through the fake upstream, and both expose what Prometheus scrapes. The secrets compose
requires are made here, as deploy/README.md has the operator make them."""

from __future__ import annotations

import aiohttp

from tests.deploy.files import DEPLOY, compose_defaults, compose_required, load_yaml, random_secrets
from tests.support.processes import start_gateway_process
from tests.support.servers import start_upstream


def _compose_env(redis_url: str) -> dict[str, str]:
    environment = load_yaml(DEPLOY / "compose.yaml")["services"]["gateway"]["environment"]
    secrets = random_secrets({name for value in environment.values() for name in compose_required(str(value))})
    env = {name: compose_defaults(str(value), secrets) for name, value in environment.items()}
    assert env["REDIS_URL"].startswith("redis://redis:")
    return {**env, "REDIS_URL": redis_url}


async def test_two_replicas_share_one_redis(redis_url, tmp_path):
    _, upstream = await start_upstream()
    text = (DEPLOY / "gateway.compose.yaml").read_text()
    assert "http://fake-upstream:9099" in text
    text = text.replace("http://fake-upstream:9099", upstream.url).replace("host: 0.0.0.0", "host: 127.0.0.1")
    env = _compose_env(redis_url)
    replicas = []
    try:
        for name in ("replica-1", "replica-2"):
            replicas.append(await start_gateway_process(text, tmp_path, name, env=env))
        first, second = replicas
        admin = {"authorization": f"Bearer {env['GATEWAY_ADMIN_TOKEN']}"}
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{first.url}/admin/keys", json={"teams": ["demo"], "name": "compose"}, headers=admin
            ) as response:
                assert response.status == 201, await response.text()
                key = (await response.json())["key"]
            for replica, model, api_key in ((second, "demo", key), (first, "demo-native", env["GATEWAY_DEMO_KEY"])):
                body = {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
                async with session.post(
                    f"{replica.url}/v1/messages", json=body, headers={"x-api-key": api_key}
                ) as response:
                    assert response.status == 200, await response.text()
                    assert (await response.json())["type"] == "message"
            for replica in replicas:
                for path in ("/readyz", "/metrics"):
                    async with session.get(replica.url + path) as response:
                        assert response.status == 200, f"{path}: {await response.text()}"
    finally:
        for replica in replicas:
            await replica.stop()
        await upstream.runner.cleanup()
