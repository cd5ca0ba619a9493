"""The gateway refuses to serve weak secrets beyond loopback (`config.exposure_problems`):
`gateway serve` exits 1 before it listens, `gateway check-config` exits 1 with the same
problems, each naming the setting and the address, never the value; a reload that would
bring one in is refused and the running configuration stays.

Nothing here listens on a non-loopback address: the refusals come before any socket is
bound, and the reload test only tells the app which address it listens on."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import aiohttp

from gateway.runtime import RUNTIME
from tests.support.processes import free_port
from tests.support.servers import gateway_config, start_gateway

ROOT = Path(__file__).resolve().parent.parent.parent
WEAK_ADMIN = "admin-change-me"


def gateway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_serve_refuses_the_quick_start_demo_key_on_every_interface():
    result = gateway("serve", "--config", "config.example.yaml", "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 1, result.stderr
    assert "config.example.yaml: 1 problem(s):" in result.stderr
    assert (
        "teams[0].keys[0].key: a placeholder or a value published with the gateway: "
        "refused on a non-loopback address (0.0.0.0)" in result.stderr
    )
    assert "gk-demo-change-me" not in result.stderr + result.stdout
    assert "listening" not in result.stderr


def test_an_admin_listener_beyond_loopback_needs_a_long_admin_token(tmp_path):
    """The client listener on loopback does not make the admin token's listener safe."""
    config = tmp_path / "gateway.yaml"
    config.write_text('admin: {token: "${GATEWAY_ADMIN_TOKEN}"}\n')
    short = {"GATEWAY_ADMIN_TOKEN": "a-short-token-0001"}
    admin = f"0.0.0.0:{free_port()}"
    for command in (["serve", "--config", str(config), "--port", str(free_port())], ["check-config", str(config)]):
        result = gateway(*command, "--admin-listen", admin, env=short)
        assert result.returncode == 1, result.stderr
        assert (
            "admin.token: too short (18 characters; at least 32): refused on a non-loopback address (0.0.0.0)"
            in result.stderr
        )
        assert short["GATEWAY_ADMIN_TOKEN"] not in result.stderr
    strong = {"GATEWAY_ADMIN_TOKEN": secrets.token_hex(32)}
    assert gateway("check-config", str(config), "--admin-listen", admin, env=strong).returncode == 0
    assert gateway("check-config", str(config), env=short).returncode == 0  # on loopback, as configured


async def test_a_reload_cannot_bring_a_weak_secret_to_a_public_listener(upstream, tmp_path):
    strong = secrets.token_hex(32)
    path = tmp_path / "gateway.yaml"
    path.write_text(f"admin: {{token: {strong}}}\n" + gateway_config(upstream.url))
    running = await start_gateway(path.read_text(), str(path))
    # As `gateway serve --host 0.0.0.0` records it (the test itself listens on loopback).
    running.app[RUNTIME].listen_hosts = ("0.0.0.0", None)
    try:
        path.write_text(f"admin: {{token: {WEAK_ADMIN}}}\n" + gateway_config(upstream.url))
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{running.url}/admin/reload", headers={"authorization": f"Bearer {strong}"}
            ) as response:
                body = await response.json()
            assert response.status == 400
            assert "admin.token: a placeholder" in body["error"]["message"]
            assert WEAK_ADMIN not in body["error"]["message"]
            for token, status in ((strong, 200), (WEAK_ADMIN, 401)):  # the running configuration stays
                async with http.get(
                    f"{running.url}/admin/teams", headers={"authorization": f"Bearer {token}"}
                ) as response:
                    assert response.status == status
    finally:
        await running.runner.cleanup()
