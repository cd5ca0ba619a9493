"""Config loading: every bad YAML in tests/fixtures/config names each of its problems by path
(the `# expect:` lines of the file), and no secret value ever appears in a message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import ConfigError, load, parse

FIXTURES = Path(__file__).parent.parent / "fixtures" / "config"
BAD = sorted(FIXTURES.glob("*.yaml"))
ROOT = Path(__file__).parent.parent.parent


def expected(path: Path) -> list[str]:
    return [line.split("# expect: ", 1)[1] for line in path.read_text().splitlines() if line.startswith("# expect: ")]


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_config_reports_every_problem_by_path(path):
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    problems = caught.value.problems
    for want in expected(path):
        assert any(problem.startswith(want) for problem in problems), (want, problems)
    assert len(problems) == len(expected(path)), problems
    assert "sk-secret-value" not in str(caught.value)


def test_example_config_is_valid_without_any_provider_key():
    config = load(ROOT / "config.example.yaml", env={})
    assert {m.name for m in config.models} >= {"demo", "demo-native"}
    assert config.backends["openai"].api_key.get_secret_value() == ""


def test_env_references_and_defaults():
    config = parse(
        """
backends:
  o: {type: openai, base_url: "${BASE:-http://h:1}/v1", api_key: "${KEY}"}
models: [{name: m, routes: [{backend: o, model: x}]}]
""",
        env={"KEY": "sk-from-env"},
    )
    backend = config.backends["o"]
    assert backend.base_url == "http://h:1/v1"
    assert backend.api_key.get_secret_value() == "sk-from-env"
    assert "sk-from-env" not in repr(config)  # SecretStr


def test_config_is_frozen():
    config = parse("models: []", env={})
    with pytest.raises(ValidationError):
        config.server.port = 1  # type: ignore[misc]


def test_check_config_cli(tmp_path):
    run = lambda *args: subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, cwd=ROOT
    )
    bad = run("check-config", str(FIXTURES / "unknown-backend.yaml"))
    assert bad.returncode == 1
    assert "models[2].routes[0].backend: unknown backend 'opnai'" in bad.stderr
    good = run("check-config", "config.example.yaml")
    assert good.returncode == 0, good.stderr
    refused = run("serve", "--config", str(FIXTURES / "unknown-key.yaml"))
    assert refused.returncode == 1
    assert "backends.openai.apikey: unknown key" in refused.stderr
    assert "sk-secret-value" not in refused.stderr + refused.stdout


def test_what_is_read_of_an_upstream_answer_is_bounded_per_backend():
    config = parse(
        """
backends:
  o: {type: openai, base_url: "http://h:1/v1"}
  a: {type: anthropic, base_url: "http://h:2", max_response_bytes: 1048576, max_event_bytes: 65536}
models: []
""",
        env={},
    )
    assert (config.backends["o"].max_response_bytes, config.backends["o"].max_event_bytes) == (64 << 20, 8 << 20)
    assert (config.backends["a"].max_response_bytes, config.backends["a"].max_event_bytes) == (1 << 20, 64 << 10)
    with pytest.raises(ConfigError) as caught:
        parse('backends: {o: {type: openai, base_url: "http://h:1", max_event_bytes: 10}}\nmodels: []', env={})
    assert any(problem.startswith("backends.o.max_event_bytes") for problem in caught.value.problems), (
        caught.value.problems
    )
