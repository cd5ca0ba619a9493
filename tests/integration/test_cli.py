"""`gateway teams ...` and `gateway keys ...` as an operator runs them: `python -m gateway`
in a subprocess, against a real `redis-server` (the `redis_url` fixture), with no gateway
running; and then a gateway sharing that Redis, to show what the CLI did takes effect.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest

from gateway.identity import hash_key
from tests.support.servers import gateway_config, start_gateway

ROOT = Path(__file__).resolve().parent.parent.parent
ASK = {"model": "chat-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


class Cli:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.outputs: list[str] = []  # stdout and stderr of every run, to search for keys

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "gateway", *args, "--config", str(self.config)]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        self.outputs.append(result.stdout + result.stderr)
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    def json(self, *args: str) -> dict:
        return json.loads(self.run(*args, "--json").stdout)

    def fails(self, *args: str) -> str:
        result = self.run(*args, ok=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        return result.stderr


@pytest.fixture
def cli(tmp_path, redis_url) -> Cli:
    config = tmp_path / "gateway.yaml"
    config.write_text(f'store: {{type: redis, url: "{redis_url}"}}\n')
    return Cli(config)


def test_teams(cli):
    created = cli.json(
        "teams",
        "create",
        "ops",
        "--name",
        "Ops",
        "--models",
        "claude-*,gpt-4o",
        "--rpm",
        "60",
        "--metadata",
        "owner=sre",
    )
    assert created["id"] == "ops" and created["models"] == ["claude-*", "gpt-4o"]
    assert created["limits"]["requests_per_minute"] == 60 and created["metadata"] == {"owner": "sre"}
    cli.run("teams", "create", "web")

    table = cli.run("teams", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "MODELS", "LIMITS", "CREATED"]
    assert table[1].split()[:4] == ["ops", "Ops", "claude-*,gpt-4o", "rpm=60"]
    assert table[2].split()[:4] == ["web", "-", "*", "-"]
    # Aligned: every row's second column starts where the header's does.
    assert {line.index(word) for line, word in zip(table, ["NAME", "Ops", "-"], strict=True)} == {
        table[0].index("NAME")
    }
    assert [team["id"] for team in cli.json("teams", "list")["data"]] == ["ops", "web"]

    updated = cli.json("teams", "update", "ops", "--rpm", "none", "--concurrency", "4", "--count-tokens-rpm", "120")
    assert updated["limits"]["requests_per_minute"] is None and updated["limits"]["concurrent_requests"] == 4
    assert updated["limits"]["count_tokens_per_minute"] == 120
    assert updated["name"] == "Ops"  # only what was named changes
    shown = cli.run("teams", "show", "ops").stdout
    assert "concurrency=4" in shown and "count-tokens-rpm=120" in shown

    assert cli.json("teams", "delete", "web") == {"id": "web", "deleted": True}
    assert "no team 'web'" in cli.fails("teams", "show", "web")


def test_keys(cli):
    cli.run("teams", "create", "ops")
    cli.run("teams", "create", "web")
    created = cli.run(
        "keys", "create", "--team", "ops", "--team", "web", "--name", "ci", "--expires-in", "30d", "--json"
    )
    made = json.loads(created.stdout)
    key = made["key"]
    assert key.startswith("gk-") and key.startswith(made["prefix"]) and made["teams"] == ["ops", "web"]
    assert made["expires_at"] == pytest.approx(time.time() + 30 * 86400, abs=120)
    assert "will not be shown again" in created.stderr  # on stderr, so stdout stays one JSON document

    human = cli.run("keys", "create", "--team", "ops", "--name", "by-hand").stdout
    assert "will not be shown again" in human
    second = next(line.split()[1] for line in human.splitlines() if line.startswith("key "))
    assert second.startswith("gk-") and second != key

    listing = cli.run("keys", "list").stdout
    assert made["id"] in listing and made["prefix"] in listing
    listed = cli.json("keys", "list", "--team", "web")["data"]
    assert [k["id"] for k in listed] == [made["id"]] and all("key" not in k and "hash" not in k for k in listed)
    shown = cli.json("keys", "show", made["id"])
    assert shown == {name: value for name, value in made.items() if name != "key"}

    rotated = cli.json("keys", "rotate", made["id"], "--grace", "1h")
    assert rotated["id"] == made["id"] and rotated["key"] != key and rotated["key"].startswith(rotated["prefix"])
    assert rotated["previous_key_expires_at"] == pytest.approx(rotated["rotated_at"] + 3600)

    revoked = cli.json("keys", "revoke", made["id"])
    assert revoked["status"] == "revoked"
    assert cli.json("keys", "revoke", made["id"])["revoked_at"] == revoked["revoked_at"]  # idempotent
    assert "revoked" in cli.run("keys", "revoke", made["id"]).stdout
    assert "revoked" in cli.fails("keys", "rotate", made["id"])

    # The keys were printed by the commands that made them, and by no other.
    for raw in (key, second, rotated["key"]):
        assert sum(raw in output for output in cli.outputs) == 1
        assert not any(hash_key(raw) in output for output in cli.outputs)


MISTAKES = [
    (("teams", "create", "no spaces"), "id: String should match pattern"),
    (("teams", "create", "t", "--rpm", "-1"), "--rpm: Input should be greater than or equal to 0"),
    (("teams", "show", "ghost"), "no team 'ghost'"),
    (("teams", "update", "ghost", "--name", "x"), "no team 'ghost'"),
    (("teams", "delete", "ghost"), "no team 'ghost'"),
    (("keys", "create", "--team", "ghost"), "teams[0]: no team 'ghost'"),
    (("keys", "create", "--team", "ops", "--default-team", "web"), "default_team"),
    (("keys", "create", "--team", "ops", "--expires-at", "soon"), "expires_at: expected Unix seconds"),
    (("keys", "show", "key_ghost"), "no key 'key_ghost'"),
    (("keys", "revoke", "key_ghost"), "no key 'key_ghost'"),
    (("keys", "rotate", "key_ghost"), "no key 'key_ghost'"),
    (("keys", "list", "--team", "ghost"), "no team 'ghost'"),
]


def test_mistakes_exit_1_with_the_reason(cli):
    cli.run("teams", "create", "ops")
    # Independent of one another, so run side by side (each is a whole interpreter).
    with ThreadPoolExecutor(max_workers=len(MISTAKES)) as pool:
        said = list(pool.map(lambda mistake: cli.fails(*mistake[0]), MISTAKES))
    for (args, says), stderr in zip(MISTAKES, said, strict=True):
        assert says in stderr, (args, stderr)


def test_team_in_use_cannot_be_deleted(cli):
    cli.run("teams", "create", "ops")
    key = cli.json("keys", "create", "--team", "ops")
    assert key["id"] in cli.fails("teams", "delete", "ops")
    cli.run("keys", "revoke", key["id"])
    cli.run("teams", "delete", "ops")


def test_refuses_the_memory_store(tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text("store: {type: memory}\n")
    for args in (("teams", "list"), ("keys", "create", "--team", "a")):
        says = Cli(config).fails(*args)
        assert "in-memory" in says and "admin API" in says and "type: redis" in says


def test_store_unreachable(tmp_path):
    from tests.support.redis_server import free_port

    config = tmp_path / "gateway.yaml"
    config.write_text(f'store: {{type: redis, url: "redis://127.0.0.1:{free_port()}/0"}}\n')
    assert "the key store cannot be reached" in Cli(config).fails("teams", "list")


async def test_what_the_cli_does_a_running_gateway_sees(cli, redis_url, upstream):
    """The CLI and a gateway share the store: a key made by the CLI opens the gateway, and
    its revocation closes it within a second (the store's change feed)."""
    running = await start_gateway(gateway_config(upstream.url, f'store: {{type: redis, url: "{redis_url}"}}'))
    try:
        made = json.loads((await asyncio.to_thread(cli.run, "keys", "create", "--team", "team-a", "--json")).stdout)
        async with aiohttp.ClientSession() as http:

            async def status() -> int:
                async with http.post(f"{running.url}/v1/messages", json=ASK, headers={"x-api-key": made["key"]}) as r:
                    return r.status

            assert await status() == 200
            await asyncio.to_thread(cli.run, "keys", "revoke", made["id"])
            deadline = time.monotonic() + 1.0
            while (got := await status()) != 401 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert got == 401
    finally:
        await running.runner.cleanup()


async def test_what_the_file_declares_is_refused_naming_the_file(tmp_path, redis_url, upstream):
    """The CLI, as the admin API: the file's teams and keys are the file's (a change here
    would be undone at the next load), but for a key's expiry."""
    config = tmp_path / "gateway.yaml"
    config.write_text(f'store: {{type: redis, url: "{redis_url}"}}\n' + gateway_config(upstream.url))
    running = await start_gateway(config.read_text())  # its start writes the file's teams and keys
    await running.runner.cleanup()
    cli = Cli(config)
    key_id = next(key["id"] for key in cli.json("keys", "list")["data"] if key["name"] == "client")
    with ThreadPoolExecutor() as pool:  # subprocesses, off the event loop
        loop = asyncio.get_running_loop()
        refusals = await asyncio.gather(
            *(
                loop.run_in_executor(pool, cli.fails, *args)
                for args in [
                    ("teams", "update", "team-a", "--rpm", "1"),
                    ("teams", "delete", "team-b"),
                    ("keys", "update", key_id, "--models", "chat-*"),
                    ("keys", "rotate", key_id, "--grace", "60"),
                ]
            )
        )
        for refusal in refusals:
            assert f"is declared in {config}" in refusal, refusal
        shown = await loop.run_in_executor(
            pool, cli.json, "keys", "update", key_id, "--expires-at", "2100-01-01T00:00:00Z"
        )
    assert shown["expires_at"] == 4102444800.0 and shown["managed_by"] == "config"
