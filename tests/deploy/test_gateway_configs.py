"""The gateway configurations in deploy/ pass `gateway check-config`, with the environment
their deployment gives them and the address it serves on (the image's and the
Deployment's `--host 0.0.0.0`): compose.yaml's `environment` for gateway.compose.yaml, the
Secret's keys for the ConfigMap's config.yaml. With secrets of the operator's own they
pass; with the placeholders the repository ships (the Secret's REPLACE_ME, the values
compose once defaulted to) the gateway refuses to start, naming each setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.deploy.files import (
    DEPLOY,
    ROOT,
    all_env,
    compose_defaults,
    compose_required,
    dockerfile_instructions,
    dockerfile_stages,
    load_yaml,
    manifest,
    random_secrets,
)

# What compose.yaml's gateway secrets defaulted to before they were required: published
# in this repository, so anybody's.
PUBLISHED = {"GATEWAY_ADMIN_TOKEN": "admin-change-me", "GATEWAY_DEMO_KEY": "gk-demo-change-me"}


def _check_config(path, env: dict[str, str], args: list[str]) -> subprocess.CompletedProcess:
    # Only the deployment's variables: a developer's own OPENAI_API_KEY must not make it pass.
    clean = {k: v for k, v in os.environ.items() if k not in env and not k.endswith(("_KEY", "_TOKEN", "_URL"))}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path), *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _serve_host(command: list[str]) -> list[str]:
    """`--host H` of a `gateway serve` command, for check-config."""
    return ["--host", command[command.index("--host") + 1]] if "--host" in command else []


def _compose(secrets: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    environment = load_yaml(DEPLOY / "compose.yaml")["services"]["gateway"]["environment"]
    env = {name: compose_defaults(str(value), secrets) for name, value in environment.items()}
    # compose's gateway runs the image's CMD.
    cmd = json.loads([a for k, a in dockerfile_stages(dockerfile_instructions())[-1]["instructions"] if k == "CMD"][-1])
    return env, _serve_host(cmd)


def _compose_secrets() -> set[str]:
    environment = load_yaml(DEPLOY / "compose.yaml")["services"]["gateway"]["environment"]
    return {name for value in environment.values() for name in compose_required(str(value))}


def _kubernetes(replace: bool) -> tuple[dict[str, str], list[str]]:
    """The container's environment from the Secret (its placeholders, or with `replace`
    each REPLACE_ME credential a random value) and the container's `--host`."""
    secret = manifest("Secret")["stringData"]
    if replace:
        secret = {**secret, **random_secrets(k for k, v in secret.items() if v == "REPLACE_ME")}
    container = manifest("Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {}
    for item in container["env"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        env[item["name"]] = secret[ref["key"]] if ref else item["value"]
    return env, _serve_host(container["args"])


@pytest.fixture(params=["compose", "kubernetes"])
def deployment(request, tmp_path):
    if request.param == "compose":
        return request.param, DEPLOY / "gateway.compose.yaml"
    path = tmp_path / "config.yaml"
    path.write_text(manifest("ConfigMap")["data"]["config.yaml"])
    return request.param, path


def _environment(kind: str, *, real: bool) -> tuple[dict[str, str], list[str]]:
    if kind == "compose":
        return _compose(random_secrets(_compose_secrets()) if real else PUBLISHED)
    return _kubernetes(replace=real)


def test_both_deployments_serve_on_every_interface(deployment):
    """What the other tests here rely on: each deployment listens on 0.0.0.0, where weak
    secrets are refused."""
    kind, path = deployment
    _, args = _environment(kind, real=True)
    host = args[1] if args else yaml.safe_load(path.read_text())["server"]["host"]
    assert host == "0.0.0.0"


def test_check_config_passes_with_secrets_of_ones_own(deployment):
    kind, path = deployment
    env, args = _environment(kind, real=True)
    result = _check_config(path, env, args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": ok (" in result.stdout


def test_the_shipped_placeholders_are_refused(deployment):
    """The Secret's REPLACE_ME and compose's former defaults stop the gateway at start,
    each setting named, no value printed."""
    kind, path = deployment
    env, args = _environment(kind, real=False)
    result = _check_config(path, env, args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "admin.token: a placeholder" in result.stderr
    if kind == "compose":
        assert "teams[0].keys[0].key: a placeholder" in result.stderr
    for value in env.values():
        if value in PUBLISHED.values() or value == "REPLACE_ME":
            assert value not in result.stderr


def test_check_config_fails_without_the_deployments_secrets(deployment):
    """The references are really used: without the environment the file does not load."""
    _, path = deployment
    result = _check_config(path, {}, [])
    assert result.returncode == 1
    assert "REDIS_URL" in result.stderr and "GATEWAY_ADMIN_TOKEN" in result.stderr


def test_redis_store_admin_api_and_no_literal_secrets(deployment):
    _, path = deployment
    raw = yaml.safe_load(path.read_text())
    assert raw["store"] == {"type": "redis", "url": "${REDIS_URL}"}
    assert raw["admin"]["token"] == "${GATEWAY_ADMIN_TOKEN}"
    for name, backend in raw["backends"].items():
        if "api_key" in backend:
            assert backend["api_key"].startswith("${"), f"backends.{name}.api_key: a literal secret"
    for team in raw.get("teams", []):
        for key in team.get("keys", []):
            assert key["key"].startswith("${"), f"teams.{team['id']}: a literal key"
        assert "*" not in team.get("models", ["*"]), f"teams.{team['id']}: a demo team open to every model"
    assert {"REDIS_URL", "GATEWAY_ADMIN_TOKEN"} <= all_env(path.read_text())
