"""Routing through the real app over real HTTP, in front of two scripted upstreams on two ports
(two "providers") and a port where nothing listens: retries, fallbacks, cooldowns, weights and
timeouts, streaming and not, and which deployment served (`x-gateway-backend`).

Each upstream records when every request arrived. Waits are checked as lower bounds between
arrivals (the gateway cannot be early; a slow machine only makes it later), never as upper
bounds.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field

import aiohttp
import anthropic
import orjson
import pytest
from multidict import CIMultiDict

from gateway.fake_upstream import FakeUpstream
from gateway.protocols.sse import SseDecoder
from gateway.runtime import RUNTIME
from tests.support.grammar import check_stream
from tests.support.replies import chat_chunks, chat_message, error
from tests.support.servers import Running, serve_app, start_gateway

BACKEND = "x-gateway-backend"
ASK = {"max_tokens": 50, "messages": [{"role": "user", "content": "hello"}]}
FULL = {"x-api-key": "full-key-0001"}
NARROW = {"x-api-key": "narrow-key-0001"}
# asyncio may run a timer this much before its time (the clock's resolution, rounded up).
EARLY = 0.001
CONTEXT = "This model's maximum context length is 4096 tokens. However, your request has 5000 input tokens."


@dataclass
class TimedUpstream(FakeUpstream):
    """The fake upstream, also noting when each request arrived (monotonic seconds)."""

    arrivals: list[float] = field(default_factory=list)

    async def _record(self, request):
        self.arrivals.append(time.monotonic())
        return await super()._record(request)

    @property
    def models(self) -> list[str]:
        return [r.body["model"] for r in self.requests]


@dataclass
class Providers:
    one: TimedUpstream
    two: TimedUpstream
    closed_port: int


def free_port() -> int:
    """A port nothing listens on (bound, then closed): connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def providers():
    runners = []
    fakes = []
    for _ in range(2):
        fake = TimedUpstream()
        runner, fake.url = await serve_app(fake.app())
        runners.append(runner)
        fakes.append(fake)
    yield Providers(one=fakes[0], two=fakes[1], closed_port=free_port())
    for runner in runners:
        await runner.cleanup()


ROUTING = "{retries: 2, backoff_base: 0.01, backoff_max: 0.05, deadline: 20, cooldown: {failures: 0}}"
TIMEOUTS = "{connect: 1, first_byte: 0.5, idle: 0.5, total: 10}"


def config(p: Providers, routing: str = ROUTING, timeouts: str = TIMEOUTS) -> str:
    return f"""
server: {{ping_interval: 0.2}}
routing: {routing}
teams:
  - id: full
    keys: [{{name: full, key: full-key-0001}}]
  - id: narrow
    models: [solo-a, guarded]
    keys: [{{name: narrow, key: narrow-key-0001}}]
backends:
  one:
    type: openai
    base_url: {p.one.url}/v1
    timeouts: {timeouts}
  two:
    type: openai
    base_url: {p.two.url}/v1
    timeouts: {timeouts}
  dead:
    type: openai
    base_url: http://127.0.0.1:{p.closed_port}/v1
    timeouts: {timeouts}
models:
  # least_busy with nothing in flight takes the heavier first: `one`, then `two`.
  - name: pair
    strategy: least_busy
    routes: [{{backend: one, model: a-pair, weight: 2}}, {{backend: two, model: b-pair, weight: 1}}]
  - name: dead-first
    strategy: least_busy
    routes: [{{backend: dead, model: d-model, weight: 2}}, {{backend: two, model: b-dead-first, weight: 1}}]
  - name: dead-solo
    routes: [{{backend: dead, model: d-solo}}]
    fallbacks: [solo-b]
  - name: solo-a
    routes: [{{backend: one, model: a-solo}}]
    fallbacks: [solo-b]
    context_fallbacks: [long-b]
  - name: solo-b
    routes: [{{backend: two, model: b-solo}}]
  - name: long-b
    routes: [{{backend: two, model: b-long}}]
  - name: weighted
    routes: [{{backend: one, model: a-weighted, weight: 3}}, {{backend: two, model: b-weighted, weight: 1}}]
"""


@pytest.fixture
async def start(providers):
    started: list[Running] = []

    async def start_with(routing: str = ROUTING, timeouts: str = TIMEOUTS) -> Running:
        running = await start_gateway(config(providers, routing, timeouts))
        started.append(running)
        return running

    yield start_with
    for running in started:
        await running.runner.cleanup()


@pytest.fixture
async def gateway(start) -> Running:
    return await start()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def post(http: aiohttp.ClientSession, gateway: Running, model: str, headers: dict = FULL, **extra):
    async with http.post(
        f"{gateway.url}/v1/messages", json={"model": model, **ASK, **extra}, headers=headers
    ) as response:
        return response.status, CIMultiDict(response.headers), orjson.loads(await response.read())


async def stream(http: aiohttp.ClientSession, gateway: Running, model: str, headers: dict = FULL):
    async with http.post(
        f"{gateway.url}/v1/messages", json={"model": model, **ASK, "stream": True}, headers=headers
    ) as response:
        raw = await response.read()
    if response.status != 200:
        return response.status, CIMultiDict(response.headers), orjson.loads(raw)
    decoder = SseDecoder()
    return (
        response.status,
        CIMultiDict(response.headers),
        [orjson.loads(e.data) for e in decoder.feed(raw) + decoder.flush()],
    )


def text_of(events: list[dict]) -> str:
    return "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")


def states(gateway: Running) -> dict[str, str]:
    return {h["upstream_model"]: h["state"] for h in gateway.app[RUNTIME].routes.router.health()}


# ============================================================ retries (not streaming)


async def test_a_refused_connection_is_retried_on_the_next_deployment(gateway, http, providers):
    status, headers, body = await post(http, gateway, "dead-first")
    assert status == 200 and headers[BACKEND] == "two"
    assert providers.two.models == ["b-dead-first"]
    assert body["content"][0]["text"].startswith("Hello from the demo upstream")


async def test_a_refused_connection_on_the_only_deployment_falls_back(gateway, http, providers):
    status, headers, _ = await post(http, gateway, "dead-solo")
    assert status == 200 and headers[BACKEND] == "two"  # the backend's name, not its URL
    assert providers.two.models == ["b-solo"]


async def test_429_with_retry_after_is_waited_for_then_the_same_deployment_serves(gateway, http, providers):
    providers.one.script(error(429, "slow down", headers={"retry-after": "0.6"}), chat_message("second time lucky"))
    status, headers, body = await post(http, gateway, "solo-a")
    assert status == 200 and headers[BACKEND] == "one"
    assert body["content"][0]["text"] == "second time lucky"
    assert providers.one.models == ["a-solo", "a-solo"] and providers.two.requests == []
    # The backoff here is at most 0.05 s: only the upstream's retry-after explains this wait.
    assert providers.one.arrivals[1] - providers.one.arrivals[0] >= 0.6 - EARLY


async def test_429_with_retry_after_beyond_the_deadline_goes_to_the_fallback_at_once(start, http, providers):
    gateway = await start("{retries: 2, backoff_base: 0.01, deadline: 5, cooldown: {failures: 0}}")
    providers.one.script(error(429, "come back in an hour", headers={"retry-after": "3600"}))
    status, headers, _ = await post(http, gateway, "solo-a")
    assert status == 200 and headers[BACKEND] == "two"
    assert providers.one.models == ["a-solo"] and providers.two.models == ["b-solo"]


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529])
async def test_a_5xx_is_retried_on_the_same_deployment(gateway, http, providers, status):
    providers.one.script(error(status, "upstream trouble"), chat_message("recovered"))
    answer, headers, body = await post(http, gateway, "solo-a")
    assert answer == 200 and headers[BACKEND] == "one"
    assert body["content"][0]["text"] == "recovered"
    assert providers.one.models == ["a-solo", "a-solo"] and providers.two.requests == []


@pytest.mark.parametrize("status", [500, 529])
async def test_a_5xx_moves_to_the_other_provider(gateway, http, providers, status):
    providers.one.script(error(status, "upstream trouble"))
    providers.two.script(chat_message("from two"))
    answer, headers, body = await post(http, gateway, "pair")
    assert answer == 200 and headers[BACKEND] == "two"
    assert body["content"][0]["text"] == "from two"
    assert providers.one.models == ["a-pair"] and providers.two.models == ["b-pair"]


async def test_a_hang_before_headers_times_out_and_the_other_provider_serves(gateway, http, providers):
    providers.one.script({**chat_message("too late"), "delay": 5})
    providers.two.script(chat_message("on time"))
    began = time.monotonic()
    status, headers, body = await post(http, gateway, "pair")
    assert status == 200 and headers[BACKEND] == "two"
    assert body["content"][0]["text"] == "on time"
    assert providers.one.models == ["a-pair"]
    # `first_byte: 0.5` gave up on one (its clock starts after `began`): two was asked after.
    assert providers.two.arrivals[0] - began >= 0.5


async def test_every_deployment_failing_falls_back_to_the_next_model(gateway, http, providers):
    providers.one.script(*[error(500, "down")] * 3)
    status, headers, _ = await post(http, gateway, "solo-a")
    assert status == 200 and headers[BACKEND] == "two"
    assert providers.one.models == ["a-solo"] * 3  # 1 + retries: 2
    assert providers.two.models == ["b-solo"]


@pytest.mark.parametrize(
    "garbage",
    [
        {"body": "<html>502 Bad Gateway</html>"},  # not JSON: a proxy's error page with a 200
        {"json": {"object": "chat.completion"}},  # JSON, but no choices
    ],
)
async def test_an_answer_that_is_not_the_protocol_is_the_upstream_s_failure(gateway, http, providers, garbage):
    """A 200 whose body is not a Chat Completion is a bad gateway (502, never the 500 of a
    gateway bug): counted against the deployment, retried, then a fallback serves."""
    providers.one.script(*[garbage] * 3)
    status, headers, _ = await post(http, gateway, "solo-a")
    assert status == 200 and headers[BACKEND] == "two"
    assert providers.one.models == ["a-solo"] * 3 and providers.two.models == ["b-solo"]
    providers.one.script(*[garbage] * 3)
    providers.two.script(*[garbage] * 3)
    status, _, body = await post(http, gateway, "solo-a")
    assert status == 502 and body["error"]["type"] == "api_error"


async def test_when_the_fallback_fails_too_the_last_error_is_answered(gateway, http, providers):
    providers.one.script(*[error(503, "down")] * 3)
    providers.two.script(*[error(500, "down too")] * 3)
    status, headers, body = await post(http, gateway, "solo-a")
    assert status == 500 and body["error"]["type"] == "api_error"
    assert BACKEND not in headers
    assert len(providers.one.requests) == 3 and providers.two.models == ["b-solo"] * 3


async def test_a_context_length_refusal_goes_to_the_context_fallback(gateway, http, providers):
    providers.one.script(error(400, CONTEXT))
    providers.two.script(chat_message("I have room"))
    status, headers, body = await post(http, gateway, "solo-a")
    assert status == 200 and headers[BACKEND] == "two"
    assert body["content"][0]["text"] == "I have room"
    assert providers.one.models == ["a-solo"]
    assert providers.two.models == ["b-long"]  # the context fallback, not the ordinary one


@pytest.mark.parametrize(
    ("upstream_status", "answered", "error_type"),
    [
        (400, 400, "invalid_request_error"),
        (401, 500, "api_error"),  # the gateway's own credential was refused, not the client's
        (403, 500, "api_error"),
        (404, 404, "not_found_error"),
        (413, 413, "request_too_large"),
    ],
)
async def test_non_retryable_errors_are_answered_at_once(
    gateway, http, providers, upstream_status, answered, error_type
):
    providers.one.script(error(upstream_status, "no"))
    status, headers, body = await post(http, gateway, "solo-a")
    assert (status, body["error"]["type"]) == (answered, error_type)
    assert len(providers.one.requests) == 1  # not retried
    assert providers.two.requests == []  # not fallen back
    assert states(gateway)["a-solo"] == "closed"


# ============================================================ cooldown


async def test_a_failing_deployment_is_cooled_down_and_probed_back(start, http, providers):
    gateway = await start("{retries: 0, cooldown: {failures: 2, window: 30, seconds: 2}}")
    providers.one.script(error(500, "down"), error(500, "down"))
    for _ in range(2):
        status, headers, _ = await post(http, gateway, "solo-a")
        assert (status, headers[BACKEND]) == (200, "two")  # served by the fallback
    assert states(gateway)["a-solo"] == "open"
    for _ in range(3):
        status, headers, _ = await post(http, gateway, "solo-a")
        assert (status, headers[BACKEND]) == (200, "two")
    assert len(providers.one.requests) == 2  # no hit while open
    assert len(providers.two.requests) == 5

    # After `seconds`, one probe: it fails, so the breaker opens again.
    await until(lambda: states(gateway)["a-solo"] == "half_open")
    providers.one.script(error(503, "still down"))
    status, headers, _ = await post(http, gateway, "solo-a")
    assert (status, headers[BACKEND]) == (200, "two") and len(providers.one.requests) == 3
    assert states(gateway)["a-solo"] == "open"
    status, headers, _ = await post(http, gateway, "solo-a")
    assert headers[BACKEND] == "two" and len(providers.one.requests) == 3

    # The next probe succeeds: back in rotation for good.
    await until(lambda: states(gateway)["a-solo"] == "half_open")
    for _ in range(3):
        status, headers, _ = await post(http, gateway, "solo-a")
        assert (status, headers[BACKEND]) == (200, "one")
    assert states(gateway)["a-solo"] == "closed" and len(providers.one.requests) == 6


async def test_a_cooling_deployment_of_a_model_leaves_the_other_to_serve(start, http, providers):
    gateway = await start("{retries: 1, backoff_base: 0.01, cooldown: {failures: 1, window: 30, seconds: 30}}")
    providers.one.script(error(529, "overloaded"))
    status, headers, _ = await post(http, gateway, "pair")
    assert (status, headers[BACKEND]) == (200, "two")
    assert states(gateway)["a-pair"] == "open"
    results = await asyncio.gather(*(post(http, gateway, "pair") for _ in range(10)))
    assert {headers[BACKEND] for _, headers, _ in results} == {"two"}
    assert len(providers.one.requests) == 1


async def test_every_deployment_cooling_is_routed_to_the_first_to_reopen(start, http, providers, caplog, monkeypatch):
    """The outage this replaced: both deployments of `pair` failed once, and every team
    got 529 for the 30 s cooldown while the upstreams were already fine again."""
    monkeypatch.setattr(logging.getLogger("gateway.access"), "propagate", True)  # as `gateway serve` may have left it
    caplog.set_level(logging.INFO, logger="gateway.access")
    gateway = await start("{retries: 0, cooldown: {failures: 1, window: 30, seconds: 30}}")
    providers.one.script(error(500, "down"))
    providers.two.script(error(500, "down"))
    assert (await post(http, gateway, "pair"))[0] == 500  # one fails, and with retries: 0 that is it
    assert (await post(http, gateway, "pair"))[0] == 500  # two fails (one is cooling)
    assert (states(gateway)["a-pair"], states(gateway)["b-pair"]) == ("open", "open")
    status, headers, body = await post(http, gateway, "pair")
    assert (status, headers[BACKEND]) == (200, "one")  # `one` opened first: its cooldown ends first
    assert states(gateway)["a-pair"] == "closed" and states(gateway)["b-pair"] == "open"
    assert (len(providers.one.requests), len(providers.two.requests)) == (2, 1)
    await gateway.settled()
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert [line.get("panic", False) for line in lines] == [False, False, True]  # the log says which


@pytest.mark.parametrize(
    ("status", "answer", "error_type"), [(500, 529, "overloaded_error"), (429, 429, "rate_limit_error")]
)
async def test_refusing_when_all_are_open_says_why_and_for_how_long(start, http, providers, status, answer, error_type):
    gateway = await start("{retries: 0, cooldown: {failures: 1, window: 30, seconds: 30, when_all_open: refuse}}")
    providers.one.script(error(status, "down"))
    providers.two.script(error(status, "down"))
    await post(http, gateway, "pair")
    await post(http, gateway, "pair")
    code, headers, body = await post(http, gateway, "pair")
    assert code == answer and body["error"]["type"] == error_type
    assert "cooling down" in body["error"]["message"]
    assert 1 <= int(headers["retry-after"]) <= 30
    assert len(providers.one.requests) + len(providers.two.requests) == 2


async def test_an_upstream_429_that_outlasts_the_retries_reaches_the_client_as_429(start, http, providers):
    gateway = await start("{retries: 1, backoff_base: 0.01, deadline: 5, cooldown: {failures: 0}}")
    providers.one.script(*[error(429, "slow down", headers={"retry-after": "0.05"})] * 2)
    providers.two.script(*[error(429, "slow down", headers={"retry-after": "7"})] * 2)
    status, headers, body = await post(http, gateway, "solo-b")
    assert (status, body["error"]["type"], headers["retry-after"]) == (429, "rate_limit_error", "7")


@pytest.mark.parametrize(
    "failure",
    [
        {"sse": [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}], "reset_after": 1},
        {"sse": [{"choices": [{"index": 0, "delta": {"content": "hi"}}]}, "not json"]},
        {"sse": [{"choices": [{"index": 0, "delta": {"content": "hi"}}]}, {"error": {"message": "overloaded"}}]},
        {"sse": [{"choices": [{"index": 0, "delta": {"content": "hi"}}]}], "stall_after": 1},
    ],
    ids=["reset", "garbage", "in-band-error", "stall"],
)
async def test_a_stream_that_fails_after_it_started_counts_against_its_deployment(start, http, providers, failure):
    gateway = await start("{retries: 0, cooldown: {failures: 2, window: 30, seconds: 30}}")
    providers.one.script(failure, failure)
    for _ in range(2):
        status, _, events = await stream(http, gateway, "solo-a")
        assert status == 200 and events[-1]["type"] == "error"
    await gateway.settled()  # the stream is judged once its handler ends, after the client read it
    assert states(gateway)["a-solo"] == "open"


async def test_a_stream_whose_client_leaves_says_nothing_of_its_deployment(start, http, providers):
    gateway = await start("{retries: 0, cooldown: {failures: 1, window: 30, seconds: 30}}")
    providers.one.script({"sse": chat_chunks({"content": "a"}, {"content": "b"}), "chunk_delay": 0.5})
    async with http.post(
        f"{gateway.url}/v1/messages", json={"model": "solo-a", **ASK, "stream": True}, headers=FULL
    ) as response:
        await response.content.readline()  # the stream began; now the client goes
    await gateway.settled()
    assert states(gateway)["a-solo"] == "closed"
    assert (
        gateway.app[RUNTIME]
        .routes.router.breaker(gateway.app[RUNTIME].routes.router.resolve("solo-a").primary)
        .pristine
    )


# ============================================================ weights


async def test_weights_hold_over_many_requests(start, http, providers):
    """Where each request is first sent. The fixture's `first_byte: 0.5` is for the
    timeout tests: here, 50 requests at once on a loaded machine could wait that long and
    be retried on the other deployment, which would be a timeout's count, not a weight's."""
    gateway = await start(timeouts="{connect: 10, first_byte: 60, idle: 60, total: 120}")
    n = 200
    results = []
    for _ in range(4):
        results += await asyncio.gather(*(post(http, gateway, "weighted") for _ in range(n // 4)))
    assert all(status == 200 for status, _, _ in results)
    served = [headers[BACKEND] for _, headers, _ in results]
    # 3:1 → 150 of 200 expected on one; ±27 is 4.4 standard deviations.
    assert 123 <= served.count("one") <= 177, served.count("one")
    assert served.count("one") == len(providers.one.requests)
    assert served.count("two") == len(providers.two.requests)


# ============================================================ streaming


async def test_a_stream_retries_before_the_first_byte(gateway, http, providers):
    providers.one.script(error(500, "down"))
    providers.two.script({"sse": chat_chunks({"content": "streamed "}, {"content": "from two"})})
    status, headers, events = await stream(http, gateway, "pair")
    assert status == 200 and headers[BACKEND] == "two"
    check_stream(events)
    assert text_of(events) == "streamed from two"
    assert providers.one.models == ["a-pair"] and providers.two.models == ["b-pair"]


async def test_a_stream_falls_back_after_429s_and_a_hang(gateway, http, providers):
    providers.one.script(
        error(429, "slow down", headers={"retry-after": "0.1"}),
        {"sse": chat_chunks({"content": "too late"}), "delay": 5},  # hangs before its headers
        error(529, "overloaded"),
    )
    providers.two.script({"sse": chat_chunks({"content": "fallback stream"})})
    status, headers, events = await stream(http, gateway, "solo-a")
    assert status == 200 and headers[BACKEND] == "two"
    check_stream(events)
    assert text_of(events) == "fallback stream"
    assert providers.one.models == ["a-solo"] * 3 and providers.two.models == ["b-solo"]
    assert providers.one.arrivals[1] - providers.one.arrivals[0] >= 0.1 - EARLY  # retry-after honoured
    # The second attempt started after that wait, and its `first_byte: 0.5` was waited out.
    assert providers.one.arrivals[2] - providers.one.arrivals[0] >= 0.6 - EARLY


async def test_a_stream_refused_connection_moves_on(gateway, http, providers):
    providers.two.script({"sse": chat_chunks({"content": "two streams"})})
    status, headers, events = await stream(http, gateway, "dead-first")
    assert status == 200 and headers[BACKEND] == "two" and text_of(events) == "two streams"


async def test_a_stream_context_refusal_goes_to_the_context_fallback(gateway, http, providers):
    providers.one.script(error(400, CONTEXT))
    providers.two.script({"sse": chat_chunks({"content": "long enough"})})
    status, headers, events = await stream(http, gateway, "solo-a")
    assert status == 200 and headers[BACKEND] == "two" and text_of(events) == "long enough"
    assert providers.two.models == ["b-long"]


async def test_a_stream_non_retryable_error_is_answered_at_once(gateway, http, providers):
    providers.one.script(error(404, "no such model"))
    status, headers, body = await stream(http, gateway, "solo-a")
    assert status == 404 and body["error"]["type"] == "not_found_error"
    assert len(providers.one.requests) == 1 and providers.two.requests == []


async def test_a_stall_mid_stream_is_an_error_event_not_a_retry(gateway, http, providers):
    providers.one.script({"sse": chat_chunks({"content": "partial "}, {"content": "never"}), "stall_after": 2})
    status, headers, events = await stream(http, gateway, "solo-a")
    assert status == 200 and headers[BACKEND] == "one"
    check_stream(events)
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "timeout_error"
    assert text_of(events) == "partial "
    assert len(providers.one.requests) == 1 and providers.two.requests == []  # the 200 was sent: no retry


# ============================================================ teams and fallbacks


async def test_a_team_never_reaches_a_fallback_it_may_not_use(gateway, http, providers):
    # `narrow` may use solo-a, but neither its fallback solo-b nor its context fallback long-b.
    providers.one.script(*[error(500, "down")] * 3)
    status, _, body = await post(http, gateway, "solo-a", headers=NARROW)
    assert status == 500 and body["error"]["type"] == "api_error"
    assert len(providers.one.requests) == 3

    providers.one.script(error(400, CONTEXT))
    status, _, body = await post(http, gateway, "solo-a", headers=NARROW)
    assert status == 400 and body["error"]["message"].startswith("prompt is too long")

    providers.one.script(*[error(529, "down")] * 3)
    status, _, _ = await stream(http, gateway, "solo-a", headers=NARROW)
    assert status == 529
    assert providers.two.requests == []

    # The same failures for a team that may: the fallback serves.
    providers.one.script(*[error(500, "down")] * 3)
    status, headers, _ = await post(http, gateway, "solo-a")
    assert (status, headers[BACKEND]) == (200, "two")


async def test_in_flight_counts_return_to_zero(gateway, http, providers):
    providers.one.script(error(500, "down"), {"sse": chat_chunks({"content": "x"}), "stall_after": 1})
    await post(http, gateway, "pair")
    await stream(http, gateway, "solo-a")
    await asyncio.gather(*(post(http, gateway, "weighted") for _ in range(10)))
    assert all(h["in_flight"] == 0 for h in gateway.app[RUNTIME].routes.router.health())


async def until(condition, timeout: float = 10.0) -> None:
    """Wait for `condition()` (polling); the timeout only stops a broken test from hanging."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# ============================================================ the model that serves is authorized


def authorization_config(p: Providers) -> str:
    """A team whose `models` pattern (`cheap-*`) a name nobody configured also matches,
    with `default_model` a model it may not use: the security review's case."""
    return f"""
routing: {{retries: 0, cooldown: {{failures: 0}}, default_model: opus}}
teams:
  - id: cheap
    models: ["cheap-*", "vendor/allowed-*"]
    keys: [{{name: cheap, key: cheap-key-0001}}]
  - id: all
    keys:
      - {{name: all, key: all-key-0001}}
      - {{name: narrowed, key: narrowed-key-0001, models: ["cheap-*"]}}
backends:
  one: {{type: openai, base_url: {p.one.url}/v1, timeouts: {TIMEOUTS}}}
  two: {{type: anthropic, base_url: {p.two.url}, timeouts: {TIMEOUTS}}}
models:
  - name: opus
    routes: [{{backend: one, model: a-opus}}]
  - name: sonnet
    routes: [{{backend: one, model: a-sonnet}}]
    fallbacks: [cheap-small]
  - name: cheap-big
    routes: [{{backend: one, model: a-cheap-big}}]
    fallbacks: [opus, cheap-small]
  - name: cheap-small
    aliases: [small]
    routes: [{{backend: two, model: b-cheap-small}}]
  - name: "vendor/*"
    routes: [{{backend: two}}]
"""


CHEAP = {"x-api-key": "cheap-key-0001"}
NARROWED = {"x-api-key": "narrowed-key-0001"}
FULL_ALL = {"x-api-key": "all-key-0001"}


@pytest.fixture
async def authorizing(providers) -> Running:
    running = await start_gateway(authorization_config(providers))
    yield running
    await running.runner.cleanup()


async def count(http: aiohttp.ClientSession, gateway: Running, model: str, headers: dict) -> tuple[int, dict]:
    body = {"model": model, "messages": ASK["messages"]}
    async with http.post(f"{gateway.url}/v1/messages/count_tokens", json=body, headers=headers) as response:
        return response.status, orjson.loads(await response.read())


async def listed(http: aiohttp.ClientSession, gateway: Running, headers: dict) -> list[str]:
    async with http.get(f"{gateway.url}/v1/models?limit=1000", headers=headers) as response:
        assert response.status == 200
        return [entry["id"] for entry in (await response.json())["data"]]


async def shown(http: aiohttp.ClientSession, gateway: Running, model: str, headers: dict) -> int:
    async with http.get(f"{gateway.url}/v1/models/{model}", headers=headers) as response:
        return response.status


@pytest.mark.parametrize("headers", [CHEAP, NARROWED], ids=["team", "key"])
async def test_a_name_the_pattern_matches_does_not_reach_a_forbidden_default(authorizing, http, providers, headers):
    # `cheap-bogus` matches `cheap-*` but nobody configured it: default_model takes it to
    # opus, which the team (or the key) may not use. It was served by opus.
    for model in ("cheap-bogus", "opus"):
        for answer in (await post(http, authorizing, model, headers), await stream(http, authorizing, model, headers)):
            status, _, body = answer
            assert status == 403 and body["error"]["type"] == "permission_error"
            assert body["error"]["message"].endswith(f"may not use model '{model}'")  # the name asked for
        assert (await count(http, authorizing, model, headers))[0] == 403
        assert await shown(http, authorizing, model, headers) == 404  # what it may not use, it does not see
    assert providers.one.requests == [] and providers.two.requests == []
    async with anthropic.AsyncAnthropic(base_url=authorizing.url, api_key=headers["x-api-key"], max_retries=0) as sdk:
        with pytest.raises(anthropic.PermissionDeniedError) as caught:
            await sdk.messages.create(model="cheap-bogus", **ASK)
        assert caught.value.status_code == 403


async def test_the_default_serves_a_team_that_may_use_it(authorizing, http, providers):
    status, headers, _ = await post(http, authorizing, "cheap-bogus", FULL_ALL)
    assert (status, headers[BACKEND]) == (200, "one") and providers.one.models == ["a-opus"]


async def test_a_forbidden_fallback_is_skipped_and_an_allowed_one_serves(authorizing, http, providers):
    providers.one.script(error(500, "down"))
    status, headers, _ = await post(http, authorizing, "cheap-big", CHEAP)
    # cheap-big failed; its fallback opus is not the team's, cheap-small is.
    assert (status, headers[BACKEND]) == (200, "two")
    assert providers.one.models == ["a-cheap-big"] and providers.two.models == ["b-cheap-small"]


async def test_a_forbidden_model_with_an_allowed_fallback_is_served_by_the_fallback(authorizing, http, providers):
    # Every model that could serve is judged on its own: sonnet is skipped like a
    # forbidden fallback, and cheap-small, its fallback, serves (and counts the tokens).
    status, headers, _ = await post(http, authorizing, "sonnet", CHEAP)
    assert (status, headers[BACKEND]) == (200, "two")
    status, counted = await count(http, authorizing, "sonnet", CHEAP)
    assert status == 200 and isinstance(counted["input_tokens"], int)
    assert providers.one.requests == []
    assert [(r.path, r.body["model"]) for r in providers.two.requests] == [
        ("/v1/messages", "b-cheap-small"),
        ("/v1/messages/count_tokens", "b-cheap-small"),
    ]
    assert await shown(http, authorizing, "sonnet", CHEAP) == 200


async def test_models_lists_what_the_team_would_be_served(authorizing, http):
    assert await listed(http, authorizing, CHEAP) == ["sonnet", "cheap-big", "cheap-small", "small"]
    assert await listed(http, authorizing, NARROWED) == ["sonnet", "cheap-big", "cheap-small", "small"]
    assert await listed(http, authorizing, FULL_ALL) == ["opus", "sonnet", "cheap-big", "cheap-small", "small"]


async def test_an_alias_names_its_model_and_a_wildcard_the_name_it_took(authorizing, http, providers):
    assert (await post(http, authorizing, "small", CHEAP))[0] == 200  # an alias of cheap-small
    status, _, _ = await post(http, authorizing, "vendor/allowed-x", CHEAP)
    assert status == 200 and providers.two.models == ["b-cheap-small", "allowed-x"]
    status, _, body = await post(http, authorizing, "vendor/other", CHEAP)
    assert status == 403 and body["error"]["message"].endswith("may not use model 'vendor/other'")
