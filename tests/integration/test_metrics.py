"""Observability through the real gateway: `/metrics` adds up to exactly the traffic sent
(streamed and not, an upstream error, a 429), label values stay bounded whatever clients
send, the access log carries no key, prompt or answer, `x-gateway-overhead-ms` is on
every response, readiness follows Redis, and two processes sharing a multiprocess
directory export one set of totals.

Each scrape is parsed with prometheus-client's own parser, as Prometheus would read it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observe import names as n
from gateway.runtime import RUNTIME
from tests.support import binaries
from tests.support.processes import start_gateway_process
from tests.support.redis_server import RedisServer
from tests.support.replies import chat_chunks, chat_message, error, native_message
from tests.support.servers import gateway_config, start_gateway

ASK = {"model": "chat-model", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
KEY = {"x-api-key": "client-key"}

TEAMS = """
  - id: team-a
    keys:
      - {name: client, key: client-key}
  - id: metered
    limits: {requests_per_minute: 1}
    keys: [{name: metered, key: metered-key-0001}]
  - id: limited
    limits: {requests_per_minute: 100000}
    keys: [{name: limited, key: limited-key-0001}]
  - id: crowd
    keys:
""" + "".join(f"      - {{name: k{i}, key: crowd-key-{i:04d}}}\n" for i in range(25))


Samples = dict[tuple[str, frozenset], float]


async def scrape(http: aiohttp.ClientSession, url: str, *, requests: int | None = None) -> tuple[Samples, str]:
    """One scrape, parsed. With `requests`: the first scrape that has recorded that many
    requests and none in flight. A complete answer reaches the client before its metrics
    are recorded (they cost it no latency), so a scrape sent right after the answer may
    come before them; this waits for them, up to a deadline, instead of racing them."""
    deadline = time.monotonic() + 15
    while True:
        async with http.get(f"{url}/metrics") as response:  # no client key: Prometheus has none
            assert response.status == 200
            assert response.headers["content-type"].startswith("text/plain")
            text = await response.text()
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        if requests is None:
            return samples, text
        recorded, in_flight = value(samples, n.REQUESTS), value(samples, n.IN_FLIGHT)
        if recorded == requests and in_flight == 0:
            return samples, text
        assert recorded <= requests, f"{recorded} requests recorded, {requests} sent"
        assert time.monotonic() < deadline, f"{recorded} of {requests} requests recorded, {in_flight} in flight"
        await asyncio.sleep(0.02)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def series(samples: Samples) -> set[tuple[str, frozenset]]:
    """The series the gateway's own metrics export (process_* metrics vary by themselves)."""
    return {key for key in samples if key[0].startswith(("gateway_", "gen_ai_"))}


async def post(http: aiohttp.ClientSession, url: str, body: dict = ASK, headers: dict = KEY) -> tuple[int, dict, bytes]:
    async with http.post(f"{url}/v1/messages", json=body, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


@pytest.fixture
async def gateway(upstream):
    running = await start_gateway(gateway_config(upstream.url, teams=TEAMS))
    yield running
    await running.runner.cleanup()


async def test_the_counts_and_token_sums_are_what_was_sent(gateway, upstream):
    upstream.script(
        chat_message("one", usage={"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}),
        chat_message("two", usage={"prompt_tokens": 200, "completion_tokens": 20, "total_tokens": 220}),
        {
            "sse": chat_chunks(
                {"content": "three"}, usage={"prompt_tokens": 300, "completion_tokens": 30, "total_tokens": 330}
            )
        },
        {
            "sse": chat_chunks(
                {"content": "four"}, usage={"prompt_tokens": 400, "completion_tokens": 40, "total_tokens": 440}
            )
        },
        native_message(
            [{"type": "text", "text": "cached"}],
            usage={
                "input_tokens": 50,
                "output_tokens": 5,
                "cache_read_input_tokens": 1000,
                "cache_creation_input_tokens": 7,
            },
        ),
        error(500, "boom"),
        chat_message("metered", usage={"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}),
    )
    async with aiohttp.ClientSession() as http:
        statuses = [
            (await post(http, gateway.url))[0],
            (await post(http, gateway.url))[0],
            (await post(http, gateway.url, {**ASK, "stream": True}))[0],
            (await post(http, gateway.url, {**ASK, "stream": True}))[0],
            (await post(http, gateway.url, {**ASK, "model": "native-model"}))[0],
            (await post(http, gateway.url))[0],
            (await post(http, gateway.url, headers={"x-api-key": "metered-key-0001"}))[0],
            (await post(http, gateway.url, headers={"x-api-key": "metered-key-0001"}))[0],
        ]
        assert statuses == [200, 200, 200, 200, 200, 500, 200, 429]
        samples, _ = await scrape(http, gateway.url, requests=8)

    requests = n.REQUESTS
    assert value(samples, requests, team="team-a", model="chat-model", backend="chat", status_class="2xx") == 4
    assert value(samples, requests, team="team-a", model="native-model", backend="native", status_class="2xx") == 1
    assert value(samples, requests, team="team-a", model="chat-model", status_class="5xx") == 1
    assert value(samples, requests, team="metered", model="chat-model", status_class="2xx") == 1
    assert value(samples, requests, team="metered", model="chat-model", status_class="4xx") == 1
    assert value(samples, requests) == 8

    tokens = n.TOKENS
    assert value(samples, tokens, team="team-a", model="chat-model", token_type="input") == 1000
    assert value(samples, tokens, team="team-a", model="chat-model", token_type="output") == 100
    assert value(samples, tokens, team="team-a", model="native-model", token_type="input") == 50
    assert value(samples, tokens, team="team-a", model="native-model", token_type="output") == 5
    assert value(samples, tokens, team="team-a", model="native-model", token_type="cache_read") == 1000
    assert value(samples, tokens, team="team-a", model="native-model", token_type="cache_creation") == 7
    assert value(samples, tokens, team="metered", token_type="input") == 11

    # gen_ai: the conventions' input includes the cached part.
    usage = n.GEN_AI_TOKEN_USAGE
    native = {"gen_ai_original_model": "native-model", "gen_ai_provider_name": "anthropic"}
    assert value(samples, usage + "_sum", gen_ai_token_type="input", **native) == 50 + 1000 + 7
    assert value(samples, usage + "_sum", gen_ai_token_type="cached_input", **native) == 1000
    assert value(samples, usage + "_sum", gen_ai_token_type="cache_creation_input", **native) == 7
    assert value(samples, usage + "_sum", gen_ai_token_type="output") == 100 + 5 + 7
    chat = {"gen_ai_original_model": "chat-model", "gen_ai_request_model": "upstream-chat-model", "error_type": ""}
    assert value(samples, usage + "_count", gen_ai_token_type="input", **chat) == 5
    assert value(samples, usage + "_sum", gen_ai_token_type="input", **chat) == 1000 + 11

    duration = n.GEN_AI_REQUEST_DURATION
    assert value(samples, duration + "_count", gen_ai_operation_name="messages") == 8
    assert value(samples, duration + "_count", error_type="") == 6
    assert value(samples, duration + "_count", error_type="api_error") == 1
    assert value(samples, duration + "_count", error_type="rate_limit_error") == 1
    assert value(samples, duration + "_bucket", error_type="", le="+Inf") == 6
    assert value(samples, n.GEN_AI_TIME_TO_FIRST_TOKEN + "_count") == 2
    assert value(samples, n.GEN_AI_TIME_PER_OUTPUT_TOKEN + "_count") == 2
    assert value(samples, n.OVERHEAD + "_count", operation="messages") == 8

    assert value(samples, n.RATE_LIMIT_REJECTIONS, team="metered", limit="requests_per_minute") == 1
    assert value(samples, n.UPSTREAM_ERRORS, backend="chat", kind="status_5xx") == 1
    assert value(samples, n.IN_FLIGHT) == 0
    assert value(samples, n.OPEN_STREAMS) == 0
    assert value(samples, n.BUILD_INFO) == 1


async def test_every_response_says_what_the_gateway_cost(gateway, upstream):
    upstream.script({**chat_message("slow"), "delay": 0.3}, {"sse": chat_chunks({"content": "s"})})
    async with aiohttp.ClientSession() as http:
        slow = await post(http, gateway.url)
        streamed = await post(http, gateway.url, {**ASK, "stream": True})
        refused = await post(http, gateway.url, headers={"x-api-key": "wrong-key-0000"})
        unknown = await post(http, gateway.url, {**ASK, "model": "no-such-model"})
        async with http.get(f"{gateway.url}/healthz") as response:
            probe = response.headers
    assert (slow[0], streamed[0], refused[0], unknown[0]) == (200, 200, 401, 404)
    for headers in (slow[1], streamed[1], refused[1], unknown[1], probe):
        assert float(headers["x-gateway-overhead-ms"]) >= 0
    # The upstream's 300 ms are not the gateway's.
    assert float(slow[1]["x-gateway-overhead-ms"]) < 250


async def test_a_streams_header_leaves_out_the_wait_for_the_upstream(gateway, upstream):
    upstream.script({"sse": chat_chunks({"content": "late"}), "delay": 0.3})
    async with aiohttp.ClientSession() as http:
        status, headers, _ = await post(http, gateway.url, {**ASK, "stream": True})
        samples, _ = await scrape(http, gateway.url, requests=1)
    assert status == 200
    assert float(headers["x-gateway-overhead-ms"]) < 250
    assert value(samples, n.OVERHEAD + "_sum") < 0.25


async def test_labels_do_not_grow_with_keys_or_unknown_model_names(gateway, upstream):
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        # One of each kind of request first: the series they make are the baseline.
        await post(http, gateway.url, headers={"x-api-key": "crowd-key-0000"})
        await post(http, gateway.url, {**ASK, "model": "made-up-0"}, headers={"x-api-key": "crowd-key-0000"})
        await post(http, gateway.url, headers={"x-api-key": "not-a-key-0"})
        before, _ = await scrape(http, gateway.url, requests=3)
        names = [f"made-up-{i}-{'x' * i}" for i in range(1, 25)]
        await asyncio.gather(
            *(post(http, gateway.url, headers={"x-api-key": f"crowd-key-{i:04d}"}) for i in range(25)),
            *(
                post(http, gateway.url, {**ASK, "model": name}, headers={"x-api-key": "crowd-key-0001"})
                for name in names
            ),
            *(post(http, gateway.url, headers={"x-api-key": f"not-a-key-{i}"}) for i in range(25)),
        )
        after, text = await scrape(http, gateway.url, requests=3 + 25 + 24 + 25)
    assert series(after) == series(before)
    assert value(after, n.REQUESTS, team="crowd", model="chat-model", status_class="2xx") == 26
    assert value(after, n.REQUESTS, team="crowd", model="other", status_class="4xx") == 25
    assert value(after, n.REQUESTS, team="", status_class="4xx") == 26
    assert "made-up" not in text and "crowd-key" not in text and "not-a-key" not in text
    assert "key_" not in text and "req_" not in text  # key ids, request ids


MARKER = "PROMPT-MARKER-5d1e"
ANSWER = "ANSWER-MARKER-93b0"


async def test_logs_have_one_line_per_request_and_no_key_prompt_or_answer(gateway, upstream, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("gateway.access"), "propagate", True)  # as `gateway serve` may have left it
    caplog.set_level(logging.DEBUG)
    upstream.script(
        chat_message(f"the answer is {ANSWER}"), {"sse": chat_chunks({"content": ANSWER})}, error(500, MARKER)
    )
    asking = {**ASK, "messages": [{"role": "user", "content": f"secret {MARKER}"}], "metadata": {"user_id": MARKER}}
    async with aiohttp.ClientSession() as http:
        await post(http, gateway.url, asking)
        await post(http, gateway.url, {**asking, "stream": True})
        await post(http, gateway.url, asking)
        await post(http, gateway.url, asking, headers={"x-api-key": f"sk-{MARKER}"})
        await post(http, gateway.url, {**asking, "model": "unknown-model"})
    await gateway.settled()
    everything = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    for secret in (MARKER, ANSWER, "client-key"):
        assert secret not in everything, secret
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert len(lines) == 5
    assert len({line["request_id"] for line in lines}) == 5
    first = lines[0]
    for field in (
        "request_id",
        "team",
        "key_id",
        "model",
        "served_model",
        "backend",
        "upstream_model",
        "status",
        "error_type",
        "duration_ms",
        "upstream_ms",
        "overhead_ms",
        "stream",
        "input_tokens",
        "output_tokens",
    ):
        assert field in first, field
    assert first["team"] == "team-a" and first["key_id"].startswith("key_") and first["status"] == 200
    assert first["backend"] == "chat" and first["upstream_model"] == "upstream-chat-model"
    assert (first["input_tokens"], first["output_tokens"]) == (11, 7)
    assert lines[1]["stream"] is True and "ttft_ms" in lines[1]
    assert lines[2]["status"] == 500 and lines[2]["error_type"] == "api_error"
    assert lines[2]["upstream_errors"] == ["chat:status_5xx"]
    assert lines[3]["status"] == 401 and lines[3]["key_id"] is None


async def test_openmetrics_when_asked(gateway):
    async with aiohttp.ClientSession() as http:
        await post(http, gateway.url)
        await scrape(http, gateway.url, requests=1)
        async with http.get(
            f"{gateway.url}/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        ) as response:
            assert response.headers["content-type"].startswith("application/openmetrics-text")
            text = await response.text()
    assert text.endswith("# EOF\n")
    assert f"{n.REQUESTS}{{" in text


async def test_retries_fallbacks_and_cooldowns(upstream):
    extra = """
  - name: primary-model
    routes: [{backend: chat, model: upstream-primary}]
    fallbacks: [chat-model]
"""
    routing = "{retries: 1, backoff_base: 0, cooldown: {failures: 3, seconds: 60}}"
    running = await start_gateway(gateway_config(upstream.url, extra, teams=TEAMS, routing=routing))
    try:
        upstream.script(
            error(503, "once"), chat_message("retried"), error(502, "a"), error(502, "b"), chat_message("fb")
        )
        async with aiohttp.ClientSession() as http:
            assert (await post(http, running.url))[0] == 200
            assert (await post(http, running.url, {**ASK, "model": "primary-model"}))[0] == 200
            samples, _ = await scrape(http, running.url, requests=2)
    finally:
        await running.runner.cleanup()
    assert value(samples, n.RETRIES, model="chat-model") == 1
    # The request for primary-model: its retry, then the fallback's attempt (attempts beyond the first).
    assert value(samples, n.RETRIES, model="primary-model") == 2
    assert value(samples, n.FALLBACKS, model="primary-model", fallback_model="chat-model") == 1
    assert value(samples, n.UPSTREAM_ERRORS, backend="chat", kind="status_5xx") == 3
    # The fallback answered: its model is the one served.
    assert value(samples, n.REQUESTS, model="chat-model", status_class="2xx") == 2
    state = n.DEPLOYMENT_STATE
    primary = {"model": "primary-model", "backend": "chat", "upstream_model": "upstream-primary"}
    assert value(samples, state, state="closed", **primary) == 1  # two failures of the three that open it
    assert value(samples, state, state="open", **primary) == 0


async def test_an_open_breaker_shows(upstream):
    running = await start_gateway(
        gateway_config(upstream.url, teams=TEAMS, routing="{retries: 0, cooldown: {failures: 1}}")
    )
    try:
        upstream.script(error(500, "down"))
        async with aiohttp.ClientSession() as http:
            assert (await post(http, running.url))[0] == 500
            samples, _ = await scrape(http, running.url, requests=1)
    finally:
        await running.runner.cleanup()
    chat = {"model": "chat-model", "backend": "chat", "upstream_model": "upstream-chat-model"}
    assert value(samples, n.DEPLOYMENT_STATE, state="open", **chat) == 1
    assert value(samples, n.DEPLOYMENT_STATE, state="closed", **chat) == 0


# ---------------------------------------------------------------------------- Redis


@pytest.fixture
def own_redis():
    """A Redis of this test's own that keeps its data across a kill, as a production one does."""
    binaries.require("redis-server", "apt-get install redis-server")
    with RedisServer(persistent=True) as server:
        yield server


async def _status(http: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
    async with http.get(url) as response:
        return response.status, await response.json()


async def test_readiness_follows_redis(upstream, own_redis):
    """fail_open, so that requests go on during the outage and reach the limiter: the
    degraded gauge and the fallback admissions show it."""
    limited = {"x-api-key": "limited-key-0001"}
    text = f"store: {{type: redis, url: '{own_redis.url}'}}\nlimits: {{on_store_error: fail_open}}\n" + gateway_config(
        upstream.url, teams=TEAMS
    )
    running = await start_gateway(text)
    try:
        async with aiohttp.ClientSession() as http:
            assert await _status(http, f"{running.url}/readyz") == (200, {"status": "ready"})
            assert (await post(http, running.url, headers=limited))[0] == 200
            await running.app[RUNTIME].admission.drain()

            own_redis.kill()
            status, body = await _status(http, f"{running.url}/readyz")
            assert status == 503 and body["status"] == "unavailable"
            assert "store" in body["reason"] and "redis://" not in body["reason"]
            assert await _status(http, f"{running.url}/healthz") == (200, {"status": "ok"})  # alive all the same
            assert (await post(http, running.url, headers=limited))[0] == 200  # by the per-process fallback
            samples, _ = await scrape(http, running.url, requests=2)
            assert value(samples, n.LIMITER_DEGRADED) == 1
            assert value(samples, n.LIMITER_OUTAGES) == 1
            assert value(samples, n.LIMITER_FALLBACK_ADMISSIONS) == 1
            assert value(samples, n.REDIS_ERRORS, component="limiter", operation="admit", kind="connection") == 1
            assert value(samples, n.REDIS_ERRORS, component="store", operation="ping", kind="connection") == 1

            own_redis.start()
            began = time.monotonic()
            while (await _status(http, f"{running.url}/readyz"))[0] != 200:
                assert time.monotonic() - began < 10, "not ready again after Redis came back"
                await asyncio.sleep(0.1)
            sent = 2
            while value(samples, n.LIMITER_DEGRADED) != 0:
                assert time.monotonic() - began < 10, "the limiter did not recover after Redis came back"
                await asyncio.sleep(0.2)
                assert (await post(http, running.url, headers=limited))[0] == 200
                sent += 1
                samples, _ = await scrape(http, running.url, requests=sent)
    finally:
        await running.runner.cleanup()
    assert value(samples, n.LIMITER_OUTAGES) == 1
    assert value(samples, n.REDIS_ROUND_TRIP + "_count", component="limiter", operation="admit") >= 2
    assert value(samples, n.REDIS_ROUND_TRIP + "_count", component="store", operation="ping") >= 2


# ---------------------------------------------------------------------------- processes


async def test_two_processes_on_one_multiprocess_directory_export_one_total(upstream, tmp_path):
    """What `--workers` will do: every process writes its values under one directory and
    any of them answers a scrape with the sum. Here two `gateway serve` processes share
    the directory the way an operator's supervisor would set it."""
    directory = tmp_path / "metrics"
    env = {n.MULTIPROC_ENV: str(directory)}
    text = gateway_config(upstream.url, teams=TEAMS)
    first = await start_gateway_process(text, tmp_path, "one", env=env)
    second = await start_gateway_process(text, tmp_path, "two", env=env)
    upstream.script(*[{"sse": chat_chunks({"content": "s"})} if i % 2 else chat_message("j") for i in range(10)])
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(10):
                body = {**ASK, "stream": bool(i % 2)}
                assert (await post(http, (first, second)[i % 3 == 0].url, body))[0] == 200
            assert (await post(http, second.url, {**ASK, "model": "nope"}))[0] == 404
            from_first, _ = await scrape(http, first.url, requests=11)
            from_second, _ = await scrape(http, second.url, requests=11)
            for samples in (from_first, from_second):
                assert value(samples, n.REQUESTS, status_class="2xx") == 10
                assert value(samples, n.REQUESTS, status_class="4xx") == 1
                assert value(samples, n.TOKENS, token_type="input") == 10 * 11  # the replies' usage
                assert value(samples, n.GEN_AI_TIME_TO_FIRST_TOKEN + "_count") == 5
                assert value(samples, n.IN_FLIGHT) == 0
            await second.stop()
            samples, _ = await scrape(http, first.url, requests=11)
            assert value(samples, n.REQUESTS, status_class="2xx") == 10  # a stopped process's counts stay
    finally:
        await first.stop()
        await second.stop()
    assert any(directory.glob("counter_*.db"))
