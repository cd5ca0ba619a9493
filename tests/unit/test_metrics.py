"""`gateway/observe/metrics.py` without a server: label values folded to what the configuration
declares, one request's numbers from its Exchange, the multiprocess directory's set-up,
and the names in the README, the Grafana dashboard and the alerting rules being exactly
the names the gateway exports (promtool checks the rules when it is installed)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest, values
from prometheus_client.parser import text_string_to_metric_families

from gateway.backends.http_client import UpstreamClient
from gateway.config import Config, parse
from gateway.exchange import Exchange
from gateway.observe import metrics as m
from gateway.observe import multiprocess as mp
from gateway.observe import names as n
from gateway.runtime import Runtime, build_routes
from tests.support import binaries

ROOT = Path(__file__).resolve().parent.parent.parent

CONFIG = """
backends:
  chat: {type: openai, base_url: 'http://127.0.0.1:1/v1', preset: vllm}
  oai: {type: openai, base_url: 'http://127.0.0.1:1/v1', preset: openai}
  az: {type: openai, base_url: 'http://127.0.0.1:1/v1', preset: azure, api_version: '2024-10-21'}
  native: {type: anthropic, base_url: 'http://127.0.0.1:1'}
models:
  - name: chat-model
    aliases: [chat-alias]
    routes: [{backend: chat, model: upstream-chat}]
  - name: native-model
    routes: [{backend: native, model: claude-x}]
  - name: openai/*
    routes: [{backend: oai}]
"""


@pytest.fixture
def config():
    return parse(CONFIG, env={})


@pytest.fixture
def metrics(config):
    return m.Metrics(_runtime(config))


def _runtime(config: Config) -> Runtime:
    client = UpstreamClient()  # never used: nothing here calls a backend
    return Runtime(build_routes(config, client), client)


def samples(metrics: m.Metrics) -> dict[tuple[str, frozenset], float]:
    text = metrics.exposition("")[0].decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("gateway_", "gen_ai_")):
                found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and wanted <= ls)


def finish(metrics: m.Metrics, exchange: Exchange, operation: str = "messages", elapsed: float = 1.0) -> None:
    metrics.request_started(exchange.path or "/v1/messages")
    metrics.request_finished(exchange, operation, elapsed, streamed=False)


# ---------------------------------------------------------------------------- vocabulary


def test_names_the_configuration_does_not_declare_are_folded(config):
    words = m.Vocabulary(config)
    assert words.model(None, "chat-alias") == "chat-model"
    assert words.model("chat-model", "chat-alias") == "chat-model"
    assert words.model(None, "gpt-made-up") == n.OTHER
    assert words.model(None, None) == ""
    assert words.model("openai/*", "openai/gpt-4o") == "openai/*"
    assert words.original_model("chat-alias", "chat-model") == "chat-alias"
    assert words.original_model("openai/gpt-4o", "openai/*") == "openai/*"
    assert words.original_model("typo-model", None) == n.OTHER
    assert words.upstream_model("upstream-chat") == "upstream-chat"
    assert words.upstream_model("gpt-4o") == n.OTHER  # what a wildcard passed on, typed by a client
    assert words.backend("chat") == "chat" and words.backend("gone") == n.OTHER and words.backend(None) == ""
    assert words.providers == {"chat": "chat", "oai": "openai", "az": "azure.openai", "native": "anthropic"}


# ---------------------------------------------------------------------------- one request


def test_one_request_from_its_exchange(metrics):
    exchange = Exchange(
        path="/v1/messages",
        team_id="team-a",
        key_id="key_secret_id",
        model="chat-alias",
        served_model="chat-model",
        backend="chat",
        upstream_model="upstream-chat",
        stream=True,
        status=200,
        upstream_seconds=0.75,
        first_token_seconds=0.25,
        usage={
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 3,
        },
        retries=2,
        fallbacks=["native-model"],
        upstream_errors=[("chat", "timeout"), ("chat", "status_418"), ("x", "??")],
    )
    finish(metrics, exchange)
    found = samples(metrics)
    labels = {"team": "team-a", "model": "chat-model", "backend": "chat", "status_class": "2xx"}
    assert value(found, n.REQUESTS, operation="messages", **labels) == 1
    assert value(found, n.TOKENS, team="team-a", model="chat-model", token_type="input") == 10
    assert value(found, n.TOKENS, token_type="cache_read") == 100
    assert value(found, n.TOKENS, token_type="cache_creation") == 3
    gen_ai = {
        "gen_ai_operation_name": "messages",
        "gen_ai_provider_name": "chat",
        "gen_ai_request_model": "upstream-chat",
        "gen_ai_original_model": "chat-alias",
        "error_type": "",
    }
    assert value(found, n.GEN_AI_TOKEN_USAGE + "_sum", gen_ai_token_type="input", **gen_ai) == 113
    assert value(found, n.GEN_AI_TOKEN_USAGE + "_sum", gen_ai_token_type="cached_input") == 100
    assert value(found, n.GEN_AI_REQUEST_DURATION + "_sum", **gen_ai) == 1.0
    assert value(found, n.GEN_AI_TIME_TO_FIRST_TOKEN + "_sum") == 0.25
    assert value(found, n.GEN_AI_TIME_PER_OUTPUT_TOKEN + "_sum") == pytest.approx(0.75 / 4)
    assert value(found, n.OVERHEAD + "_sum", operation="messages", backend="chat") == pytest.approx(0.25)
    assert value(found, n.OVERHEAD + "_bucket", le="0.25") == 1
    assert value(found, n.RETRIES, model="chat-model") == 2
    assert value(found, n.FALLBACKS, model="chat-model", fallback_model="native-model") == 1
    assert value(found, n.UPSTREAM_ERRORS, backend="chat", kind="timeout") == 1
    assert value(found, n.UPSTREAM_ERRORS, backend="chat", kind="status_418") == 1
    assert value(found, n.UPSTREAM_ERRORS, backend="other", kind="other") == 1
    assert value(found, n.IN_FLIGHT) == 0
    text = metrics.exposition("")[0].decode()
    assert "key_secret_id" not in text and exchange.request_id not in text


def test_errors_and_refusals(metrics):
    finish(
        metrics,
        Exchange(
            path="/v1/messages",
            team_id="t",
            model="chat-model",
            served_model="chat-model",
            status=429,
            error_type="rate_limit_error",
            rejected_limit="tokens_per_day",
        ),
    )
    finish(
        metrics,
        Exchange(path="/v1/messages", team_id="t", model="chat-model", status=502, error_type="made_up_by_an_upstream"),
    )
    finish(metrics, Exchange(path="/v1/messages", status=401, error_type="authentication_error"))
    finish(
        metrics,
        Exchange(path="/v1/messages", team_id="t", model="chat-model", status=499, error_type="client_disconnected"),
    )
    found = samples(metrics)
    assert value(found, n.RATE_LIMIT_REJECTIONS, team="t", limit="tokens_per_day") == 1
    assert value(found, n.GEN_AI_REQUEST_DURATION + "_count", error_type="_OTHER") == 1
    assert value(found, n.REQUESTS, team="", model="", backend="", status_class="4xx") == 1
    assert value(found, n.REQUESTS, team="t", status_class="4xx") == 2
    assert value(found, n.REQUESTS, status_class="5xx") == 1
    assert value(found, n.TOKENS) == 0  # no usage, no token series


def test_paths_outside_the_api_are_not_counted(metrics):
    for path in ("/metrics", "/healthz", "/readyz", "/health"):
        assert metrics.request_started(path) is None
    assert metrics.request_started("/v1/models/x") == "models"
    assert metrics.request_started("/admin/teams") == "admin"
    assert metrics.request_started("/wp-login.php") == n.OTHER
    assert metrics.request_started("/v1/messages/count_tokens") == "count_tokens"


def test_teams_past_the_cap_are_folded(metrics, monkeypatch):
    monkeypatch.setattr(m, "MAX_TEAM_LABELS", 3)
    for i in range(10):
        finish(metrics, Exchange(path="/v1/messages", team_id=f"team-{i}", model="chat-model", status=200))
    teams = {dict(labels)["team"] for name, labels in samples(metrics) if name == n.REQUESTS}
    assert teams == {"team-0", "team-1", "team-2", n.OTHER}


def test_a_new_configuration_is_picked_up(metrics):
    runtime = metrics._runtime
    finish(metrics, Exchange(path="/v1/messages", model="new-model", status=404))
    runtime.routes = build_routes(
        parse(CONFIG + "  - name: new-model\n    routes: [{backend: chat, model: n}]\n", env={}), runtime.client
    )
    finish(metrics, Exchange(path="/v1/messages", model="new-model", served_model="new-model", status=200))
    found = samples(metrics)
    assert value(found, n.REQUESTS, model="other") == 1 and value(found, n.REQUESTS, model="new-model") == 1


def test_redis_observer(metrics):
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError

    observer = metrics.redis
    observer.round_trip("limiter", "admit", 0.002)
    observer.round_trip("limiter", "admit", 2.0, TimeoutError())
    observer.round_trip("store", "find_key", 0.1, RedisConnectionError())
    observer.round_trip("store", "create_team", 0.001, ResponseError())
    observer.round_trip("store", "get_team", 0.001, KeyError())  # the store's own answer: not a Redis error
    for event in ("outage", "fallback_admission", "refused_admission", "lost_settlement"):
        observer.limiter_event(event)
    found = samples(metrics)
    assert value(found, n.REDIS_ROUND_TRIP + "_count") == 2
    assert value(found, n.REDIS_ERRORS, component="limiter", operation="admit", kind="timeout") == 1
    assert value(found, n.REDIS_ERRORS, component="store", kind="connection") == 1
    assert value(found, n.REDIS_ERRORS, component="store", kind="error") == 1
    assert value(found, n.LIMITER_DEGRADED) == 1
    for name in (
        n.LIMITER_OUTAGES,
        n.LIMITER_FALLBACK_ADMISSIONS,
        n.LIMITER_REFUSED_ADMISSIONS,
        n.LIMITER_LOST_SETTLEMENTS,
    ):
        assert value(found, name) == 1
    observer.limiter_event("recovered")
    assert value(samples(metrics), n.LIMITER_DEGRADED) == 0


def test_two_apps_have_their_own_registries(config):
    first = m.Metrics(_runtime(config))
    second = m.Metrics(_runtime(config))
    finish(first, Exchange(path="/v1/messages", status=200))
    assert value(samples(first), n.REQUESTS) == 1
    assert value(samples(second), n.REQUESTS) == 0


def test_openmetrics_when_asked(metrics):
    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert content_type.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
    body, content_type = metrics.exposition("text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    assert content_type.startswith("text/plain") and b"# EOF" not in body


# ---------------------------------------------------------------------------- processes


@pytest.fixture
def value_class(monkeypatch):
    """setup_multiprocess switches prometheus-client's value class for the process; put it back."""
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)


def test_one_process_keeps_its_metrics_in_memory(value_class):
    environ: dict[str, str] = {}
    assert mp.setup_multiprocess(1, environ) == mp.Multiprocess(None)
    assert environ == {} and not getattr(values.ValueClass, "_multiprocess", False)


def test_several_workers_get_a_fresh_directory(value_class):
    environ: dict[str, str] = {}
    setup = mp.setup_multiprocess(2, environ)
    try:
        assert setup.owned and Path(setup.directory).is_dir() and environ[n.MULTIPROC_ENV] == setup.directory
        assert values.ValueClass._multiprocess
    finally:
        mp.teardown_multiprocess(setup)
    assert not Path(setup.directory).exists()


def test_an_operators_directory_is_emptied_for_workers_and_left_alone_for_one_process(value_class, tmp_path):
    (tmp_path / "counter_123.db").write_bytes(b"stale")
    (tmp_path / "notes.txt").write_text("not ours")
    environ = {n.MULTIPROC_ENV: str(tmp_path)}
    shared = mp.setup_multiprocess(1, environ)
    assert shared.shared and not shared.owned and (tmp_path / "counter_123.db").exists()
    workers = mp.setup_multiprocess(4, environ)
    assert workers.directory == str(tmp_path) and not workers.owned
    assert not (tmp_path / "counter_123.db").exists() and (tmp_path / "notes.txt").exists()
    mp.teardown_multiprocess(workers)
    assert tmp_path.exists()


def test_a_worker_starting_beside_others_neither_fails_its_start_nor_a_scrape(value_class, tmp_path, monkeypatch):
    """CI failed one run in three: a second worker's start read the first worker's value
    file in the instant after it was created and before it was sized (0 bytes), and died
    with `struct.error`. A scrape meeting such a file, or one removed meanwhile, failed
    the same way. Both now read only files that hold their header."""
    (tmp_path / "counter_1001.db").write_bytes(b"")
    (tmp_path / "gauge_livesum_1002.db").write_bytes(b"\0\0")
    monkeypatch.setenv(n.MULTIPROC_ENV, str(tmp_path))  # where prometheus-client's values look
    config = parse(CONFIG, env={})
    metrics = m.Metrics(_runtime(config), multiprocess_dir=str(tmp_path))
    text = generate_latest(metrics.registry).decode()
    assert "gateway_build_info" in text


# ---------------------------------------------------------------------------- names


def families(metrics: m.Metrics) -> dict[str, str]:
    """The gateway's own metric families: name → type."""
    return {f.name: f.type for f in metrics.registry.collect() if f.name.startswith(("gateway_", "gen_ai_"))}


def documented_names(metrics: m.Metrics) -> set[str]:
    """The names a reader looks up: a counter's with `_total`, a histogram's without a suffix."""
    return {name + "_total" if kind == "counter" else name for name, kind in families(metrics).items()}


def sample_names(metrics: m.Metrics) -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {name + suffix for name, kind in families(metrics).items() for suffix in suffixes[kind]}


def test_every_constant_is_exported_and_every_export_is_a_constant(metrics):
    constants = {
        v for k, v in vars(m).items() if k.isupper() and isinstance(v, str) and v.startswith(("gateway_", "gen_ai_"))
    }
    assert constants == documented_names(metrics)


def test_the_readme_documents_every_metric(metrics):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    for name in documented_names(metrics):
        assert f"`{name}`" in section, name
    for label in {
        *n.GEN_AI_TOKEN_LABELS,
        *n.REQUEST_LABELS,
        *n.TOKEN_LABELS,
        *n.DEPLOYMENT_LABELS,
        *n.REDIS_ERROR_LABELS,
    }:
        assert label in section, label
    assert "x-gateway-overhead-ms" in section


METRIC_NAME = re.compile(r"\b(?:gateway|gen_ai)_[a-z0-9_]+")


def test_dashboard_and_rules_use_only_exported_names(metrics):
    names = sample_names(metrics)
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus-rules.yaml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    queries += [
        v["query"] if isinstance(v["query"], str) else v["query"]["query"]
        for v in dashboard["templating"]["list"]
        if v["type"] == "query"
    ]
    assert expressions and queries
    recorded = {rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule}
    texts = []
    for text in expressions + queries:
        for name in recorded:
            text = text.replace(name, "")
        texts.append(text)
    used = {name for text in texts for name in METRIC_NAME.findall(text)} - set(n.GEN_AI_TOKEN_LABELS)
    assert used <= names, used - names
    assert {n.REQUESTS, n.GEN_AI_REQUEST_DURATION + "_count", n.LIMITER_DEGRADED} <= used
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    assert {
        "GatewayHighErrorRate",
        "GatewaySlowResponses",
        "GatewayRateLimitSaturation",
        "GatewayUpstreamFailures",
        "GatewayRedisDown",
    } <= alerts


@binaries.needs("promtool", how="apt-get install prometheus")
def test_promtool_accepts_the_rules_and_their_tests():
    rules = ROOT / "deploy" / "prometheus-rules.yaml"
    checked = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        ["promtool", "test", "rules", "prometheus-rules.test.yaml"],
        cwd=ROOT / "deploy",
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
