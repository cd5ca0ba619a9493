"""deploy/prometheus.yml passes `promtool check config` (Debian's prometheus package ships
promtool; .ci/run installs it). That also checks the rule file it loads,
deploy/prometheus-rules.yaml."""

from __future__ import annotations

import subprocess

import pytest

from tests.deploy.files import DEPLOY, RULES, tool


def test_promtool_checks_the_compose_prometheus_config():
    promtool = tool("promtool", "apt-get install prometheus")
    if not RULES.exists():
        pytest.skip(
            f"{RULES.relative_to(DEPLOY.parent)} is not written yet (another part of issue 9); "
            "prometheus.yml loads it, so promtool cannot check the config without it"
        )
    version = subprocess.run([promtool, "--version"], capture_output=True, text=True, check=False).stdout.splitlines()[
        0
    ]
    result = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"{version}\n{result.stdout}{result.stderr}"
