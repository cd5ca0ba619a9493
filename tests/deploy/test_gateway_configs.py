"""The gateway configurations in deploy/ pass `gateway check-config`, with the environment
their deployment gives them: compose.yaml's `environment` (its defaults) for
gateway.compose.yaml, the Secret's placeholders for the ConfigMap's config.yaml."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tests.deploy.files import DEPLOY, ROOT, all_env, compose_defaults, load_yaml, manifest


def _check_config(path, env: dict[str, str]) -> subprocess.CompletedProcess:
    # Only the deployment's variables: a developer's own OPENAI_API_KEY must not make it pass.
    clean = {k: v for k, v in os.environ.items() if k not in env and not k.endswith(("_KEY", "_TOKEN", "_URL"))}
    return subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)], cwd=ROOT,
                          env={**clean, **env}, capture_output=True, text=True, check=False, timeout=60)


def _compose_env() -> dict[str, str]:
    environment = load_yaml(DEPLOY / "compose.yaml")["services"]["gateway"]["environment"]
    return {name: compose_defaults(str(value)) for name, value in environment.items()}


def _kubernetes_env() -> dict[str, str]:
    secret = manifest("Secret")["stringData"]
    env = {}
    for item in manifest("Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        env[item["name"]] = secret[ref["key"]] if ref else item["value"]
    return env


@pytest.fixture(params=["compose", "kubernetes"])
def deployed_config(request, tmp_path):
    if request.param == "compose":
        return DEPLOY / "gateway.compose.yaml", _compose_env()
    path = tmp_path / "config.yaml"
    path.write_text(manifest("ConfigMap")["data"]["config.yaml"])
    return path, _kubernetes_env()


def test_check_config_passes(deployed_config):
    path, env = deployed_config
    result = _check_config(path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": ok (" in result.stdout


def test_check_config_fails_without_the_deployments_secrets(deployed_config):
    """The references are really used: without the environment the file does not load."""
    path, env = deployed_config
    result = _check_config(path, {})
    assert result.returncode == 1
    assert "REDIS_URL" in result.stderr and "GATEWAY_ADMIN_TOKEN" in result.stderr


def test_redis_store_admin_api_and_no_literal_secrets(deployed_config):
    path, _ = deployed_config
    raw = yaml.safe_load(path.read_text())
    assert raw["store"] == {"type": "redis", "url": "${REDIS_URL}"}
    assert raw["admin"]["token"] == "${GATEWAY_ADMIN_TOKEN}"
    for name, backend in raw["backends"].items():
        if "api_key" in backend:
            assert backend["api_key"].startswith("${"), f"backends.{name}.api_key: a literal secret"
    for team in raw.get("teams", []):
        for key in team.get("keys", []):
            assert key["key"].startswith("${"), f"teams.{team['id']}: a literal key"
    assert {"REDIS_URL", "GATEWAY_ADMIN_TOKEN"} <= all_env(path.read_text())
