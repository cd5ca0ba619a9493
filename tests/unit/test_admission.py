"""What a request asks of its team's limits and what it is settled with (`gateway/admission.py`),
and the clamp every upstream usage figure goes through (`gateway/protocols/usage.py`).

A security review found both trusted numbers they had not made: a client's `max_tokens` of
10^19 was reserved whole against the team's budgets, and an upstream's negative usage
refunded them (one past int64 failed the settlement script half-way, its lease held)."""

from __future__ import annotations

import pytest

from gateway.admission import UNCAPPED_OUTPUT_RESERVATION, count_demand, demand_for, output_reservation, usage_of
from gateway.config import Pricing, parse
from gateway.identity import ApiKey, Principal, Team
from gateway.limiter import COUNT_TOKENS, MESSAGES
from gateway.protocols.usage import MAX_TOKEN_COUNT, clamped_usage, token_count
from gateway.routing import Router

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


class FakeBackend:
    kind = "fake"

    def __init__(self, name: str) -> None:
        self.name = name


@pytest.fixture(scope="module")
def router() -> Router:
    config = parse(CONFIG, env={})
    return Router(config, {name: FakeBackend(name) for name in config.backends})  # type: ignore[arg-type]


PRINCIPAL = Principal(
    key=ApiKey(id="k", prefix="gk-", hash="h", teams=("t",), default_team="t"), team=Team(id="t")
)


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
        **fine, "output_tokens": 0, "server_tool_use": {"web_search_requests": MAX_TOKEN_COUNT, "other": 1}
    }
    assert hostile["output_tokens"] == -4  # a copy: the upstream's object is left as it came
