"""What a request asks of its team's limits and what it is settled with (`gateway/admission.py`),
and the clamp every upstream usage figure goes through (`gateway/protocols/usage.py`).

A security review found both trusted numbers they had not made: a client's `max_tokens` of
10^19 was reserved whole against the team's budgets, and an upstream's negative usage
refunded them (one past int64 failed the settlement script half-way, its lease held)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.admission import (
    UNCAPPED_OUTPUT_RESERVATION,
    Admission,
    count_demand,
    demand_for,
    output_reservation,
    usage_of,
)
from gateway.config import Pricing, parse
from gateway.exchange import Exchange
from gateway.identity import ApiKey, Limits, Principal, Team
from gateway.limiter import COUNT_TOKENS, MESSAGES, LimitExceeded, MemoryLimiter
from gateway.protocols.usage import MAX_TOKEN_COUNT, clamped_usage, token_count
from gateway.routing import Router
from tests.support.doubles import FakeBackend

CONFIG = """
backends:
  a: {type: openai, base_url: "http://a.invalid/v1"}
  b: {type: openai, base_url: "http://b.invalid/v1"}
models:
  - name: uncapped
    routes: [{backend: a, model: u}]
  - name: capped
    default_max_tokens: 2048
    routes: [{backend: a, model: c, max_output_tokens: 16384}]
  - name: two-caps
    routes: [{backend: a, model: t1, max_output_tokens: 8192}, {backend: b, model: t2, max_output_tokens: 32000}]
  - name: one-uncapped
    routes: [{backend: a, model: o1, max_output_tokens: 8192}, {backend: b, model: o2}]
"""


@pytest.fixture(scope="module")
def router() -> Router:
    config = parse(CONFIG, env={})
    return Router(config, {name: FakeBackend(name) for name in config.backends})  # type: ignore[arg-type]


PRINCIPAL = Principal(key=ApiKey(id="k", prefix="gk-", hash="h", teams=("t",), default_team="t"), team=Team(id="t"))


# ---------------------------------------------------------------- the output reservation


@pytest.mark.parametrize(
    ("model", "max_tokens", "reserved"),
    [
        ("uncapped", 10**6, UNCAPPED_OUTPUT_RESERVATION),  # no route cap: the largest output any model writes
        ("uncapped", 500, 500),
        ("uncapped", None, 4096),  # the model's default_max_tokens
        ("capped", 10**6, 16384),  # the route's max_output_tokens, as sent upstream
        ("capped", None, 2048),
        ("two-caps", 10**6, 32000),  # either route may serve: the larger
        ("one-uncapped", 10**6, UNCAPPED_OUTPUT_RESERVATION),
    ],
)
def test_the_output_reservation_is_bounded_by_what_the_routes_send(router, model, max_tokens, reserved):
    body = {"model": model, "messages": []} | ({} if max_tokens is None else {"max_tokens": max_tokens})
    assert output_reservation(body, router.resolve(model)) == reserved
    assert demand_for(PRINCIPAL, router.resolve(model), body, 10).output_tokens == reserved


def test_a_count_demand_asks_for_its_own_bucket_alone(router):
    demand = count_demand(PRINCIPAL, router.resolve("capped"))
    assert (demand.operation, demand.input_tokens, demand.output_tokens, demand.cost_usd) == (COUNT_TOKENS, 0, 0, 0)
    assert demand_for(PRINCIPAL, router.resolve("capped"), {"max_tokens": 5}, 10).operation == MESSAGES


# ---------------------------------------------------------------- usage figures


@pytest.mark.parametrize(
    ("reported", "counted"),
    [
        (7, 7),
        (0, 0),
        (-5, 0),  # never a refund
        (MAX_TOKEN_COUNT, MAX_TOKEN_COUNT),
        (2**64 - 1, MAX_TOKEN_COUNT),  # the largest JSON number orjson reads as an int
        (float(2**70), MAX_TOKEN_COUNT),  # larger ones arrive as floats
        (12.7, 12),
        (-1e30, 0),
        (float("nan"), 0),
        (True, 0),
        (None, 0),
        ("12", 0),
    ],
)
def test_a_reported_count_is_clamped(reported, counted):
    assert token_count(reported) == counted


def test_usage_is_settled_with_clamped_figures():
    usage = usage_of(
        {
            "input_tokens": -(10**6),
            "output_tokens": 2**64 - 1,
            "cache_read_input_tokens": float(2**70),
            "cache_creation_input_tokens": -1,
            "server_tool_use": {"web_search_requests": 2**64 - 1},
        },
        Pricing(input_per_mtok=1, output_per_mtok=1, web_search_per_thousand=10),
    )
    assert (usage.input_tokens, usage.output_tokens) == (0, MAX_TOKEN_COUNT)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (MAX_TOKEN_COUNT, 0)
    assert usage.cost_usd == pytest.approx(2 * MAX_TOKEN_COUNT / 1e6 + MAX_TOKEN_COUNT * 10 / 1000)
    assert usage_of({"input_tokens": -3, "server_tool_use": {"web_search_requests": -2}}, Pricing()).cost_usd == 0


def test_a_usage_object_keeps_what_needs_no_clamp():
    fine = {"input_tokens": 3, "output_tokens": 0, "cache_read_input_tokens": None, "service_tier": "standard"}
    assert clamped_usage(fine) is fine
    hostile = {**fine, "output_tokens": -4, "server_tool_use": {"web_search_requests": 2**64 - 1, "other": 1}}
    assert clamped_usage(hostile) == {
        **fine,
        "output_tokens": 0,
        "server_tool_use": {"web_search_requests": MAX_TOKEN_COUNT, "other": 1},
    }
    assert hostile["output_tokens"] == -4  # a copy: the upstream's object is left as it came


# ---------------------------------------------------------------- admitted, then settled

PRICED = """
backends:
  a: {type: openai, base_url: "http://a.invalid/v1"}
models:
  - name: dear
    pricing: {input_per_mtok: 10, output_per_mtok: 20}
    routes: [{backend: a, model: dear}]
    fallbacks: [cheap]
    context_fallbacks: [long]
  - name: cheap
    pricing: {input_per_mtok: 1, output_per_mtok: 2}
    routes: [{backend: a, model: cheap}]
  - name: long
    pricing: {input_per_mtok: 100, output_per_mtok: 100}
    routes: [{backend: a, model: long}]
"""
ASK = {"model": "dear", "max_tokens": 100, "messages": [{"role": "user", "content": "Hello there"}]}


@pytest.fixture(scope="module")
def priced() -> Router:
    config = parse(PRICED, env={})
    return Router(config, {name: FakeBackend(name) for name in config.backends})  # type: ignore[arg-type]


def principal(**limits) -> Principal:
    return Principal(
        key=ApiKey(id="k", prefix="gk-", hash="h", teams=("t",), default_team="t"),
        team=Team(id="t", limits=Limits(**limits)),
    )


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


@pytest.mark.parametrize(("served", "cost"), [("dear", 0.02), ("cheap", 0.002), ("long", 0.15)])
async def test_a_request_is_settled_once_at_the_prices_of_the_model_that_served(priced, served, cost):
    """`dear` asked for; served by it, by its fallback, or by its context fallback (which
    is not among the request's plans: the router resolves it)."""
    limiter = MemoryLimiter()
    admission = Admission(limiter)
    exchange = Exchange(served_model="dear")
    admitted = await admission.admit_request(principal(), priced, priced.candidates("dear"), ASK, exchange)
    exchange.served_model = served
    exchange.usage = {"input_tokens": 1000, "output_tokens": 500}
    admission.settle_request(admitted, exchange)
    admission.settle_request(admitted, exchange)  # a second time: nothing
    assert admitted.ticket.settled and not admission._settling  # in this process: at once, no task
    [row] = await limiter.usage("t", today(), today())
    assert (row["model"], row["requests"], row["input"], row["output"]) == ("dear", 1, 1000, 500)
    assert row["cost"] == pytest.approx(cost)


async def test_a_request_without_an_answer_is_settled_as_using_nothing(priced):
    limiter = MemoryLimiter()
    admission = Admission(limiter)
    exchange = Exchange(served_model="dear")
    admitted = await admission.admit_request(
        principal(concurrent_requests=1), priced, priced.candidates("dear"), ASK, exchange
    )
    with pytest.raises(LimitExceeded):  # its lease is held until it is settled
        await admission.admit_request(
            principal(concurrent_requests=1), priced, priced.candidates("dear"), ASK, Exchange()
        )
    admission.settle_request(admitted, exchange)
    [row] = await limiter.usage("t", today(), today())
    assert (row["requests"], row["input"], row["output"], row["cost"]) == (1, 0, 0, 0)
    await admission.admit_request(principal(concurrent_requests=1), priced, priced.candidates("dear"), ASK, Exchange())


async def test_admission_tells_the_exchange_its_headers_or_the_limit_that_refused(priced):
    admission = Admission(MemoryLimiter())
    plans = priced.candidates("dear")
    admitted = Exchange()
    await admission.admit_request(principal(requests_per_minute=1), priced, plans, ASK, admitted)
    assert admitted.ratelimit_headers["anthropic-ratelimit-requests-limit"] == "1"
    assert admitted.rejected_limit is None
    refused = Exchange()
    with pytest.raises(LimitExceeded):
        await admission.admit_request(principal(requests_per_minute=1), priced, plans, ASK, refused)
    assert refused.rejected_limit == "requests_per_minute" and refused.ratelimit_headers == {}


async def test_the_input_is_estimated_only_when_a_limit_counts_it(priced):
    admission = Admission(MemoryLimiter())
    plans = priced.candidates("dear")
    unlimited, limited = Exchange(), Exchange()
    await admission.admit_request(principal(requests_per_minute=10), priced, plans, ASK, unlimited)
    await admission.admit_request(principal(input_tokens_per_minute=10_000), priced, plans, ASK, limited)
    assert unlimited.input_estimate is None
    assert limited.input_estimate is not None and limited.input_estimate > 0


async def test_a_count_is_admitted_by_its_own_bucket_and_left_unsettled(priced):
    admission = Admission(MemoryLimiter())
    exchange = Exchange()
    await admission.admit_count(principal(count_tokens_per_minute=1), priced.resolve("dear"), exchange)
    assert exchange.ratelimit_headers["anthropic-ratelimit-requests-limit"] == "1"
    assert not admission._live  # nothing held, nothing to settle
    refused = Exchange()
    with pytest.raises(LimitExceeded):
        await admission.admit_count(principal(count_tokens_per_minute=1), priced.resolve("dear"), refused)
    assert refused.rejected_limit == "count_tokens_per_minute"
