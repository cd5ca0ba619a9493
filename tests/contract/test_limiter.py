"""The limiter contract (`gateway/limiter/base.py`), run against every implementation.

Each test takes `make_limiter`, parametrized over the in-process `MemoryLimiter`, a
`RedisLimiter` on the tests' own redis-server and one on their own 3-master Redis
Cluster, so all give the same answers. The
failures seen in other gateways' limiters each have a test here: charges for rejected
requests (LiteLLM #39309), leaked concurrency slots, fixed windows, client clocks.
Tests that only make sense for Redis (key names, round trips, TIME, a server that dies)
are at the end, then those for the cluster.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from redis.asyncio import Connection, ConnectionPool, Redis, RedisCluster
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.config import LimitsConfig, MemoryStoreConfig, RedisStoreConfig
from gateway.errors import InvalidRequest, Overloaded, RateLimited
from gateway.identity import DEFAULT_COUNT_TOKENS_PER_MINUTE, ApiKey, Limits, Team
from gateway.limiter import MemoryLimiter, open_limiter
from gateway.limiter.base import COUNT_TOKENS, Demand, Limiter, LimitExceeded, Ticket, Usage, rfc3339
from gateway.limiter.guard import GuardedLimiter
from gateway.limiter.redis import RedisLimiter, _lua, profile
from gateway.limiter.rules import calendar
from gateway.redis.clients import connect
from tests.support.redis_cluster import LocalRedisCluster, cluster_url_fixture, redis_cluster_fixture  # noqa: F401
from tests.support.redis_server import RedisServer, free_port

PREFIX = "test"
DEFAULT_COUNT = DEFAULT_COUNT_TOKENS_PER_MINUTE


@pytest.fixture(params=["memory", "redis", "cluster"])
async def make_limiter(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Limiter]]:
    """A factory: `make_limiter(lease_seconds=..., count_tokens_per_minute=...)` (the
    latter: a team's when it sets none); every limiter it makes is closed after the test."""
    made: list[Limiter] = []
    if request.param == "memory":

        def make(lease_seconds: float = 60.0, count_tokens_per_minute: int | None = DEFAULT_COUNT) -> Limiter:
            made.append(MemoryLimiter(lease_seconds=lease_seconds, count_tokens_per_minute=count_tokens_per_minute))
            return made[-1]
    elif request.param == "cluster":
        url = request.getfixturevalue("cluster_url")

        def make(lease_seconds: float = 60.0, count_tokens_per_minute: int | None = DEFAULT_COUNT) -> Limiter:
            made.append(
                cluster_limiter(url, lease_seconds=lease_seconds, count_tokens_per_minute=count_tokens_per_minute)
            )
            return made[-1]
    else:
        url = request.getfixturevalue("redis_url")

        def make(lease_seconds: float = 60.0, count_tokens_per_minute: int | None = DEFAULT_COUNT) -> Limiter:
            made.append(
                RedisLimiter.from_url(
                    url, prefix=PREFIX, lease_seconds=lease_seconds, count_tokens_per_minute=count_tokens_per_minute
                )
            )
            return made[-1]

    yield make
    for limiter in made:
        await limiter.close()


@pytest.fixture
def limiter(make_limiter: Callable[..., Limiter]) -> Limiter:
    return make_limiter()


def team(team_id: str = "a", **limits) -> Team:
    return Team(id=team_id, limits=Limits(**limits))


def key(key_id: str = "k1", team_id: str = "a", **limits) -> ApiKey:
    return ApiKey(id=key_id, prefix="gk-", hash=key_id, teams=(team_id,), default_team=team_id, limits=Limits(**limits))


def demand(
    t: Team, k: ApiKey | None = None, *, model: str = "m", input_tokens: int = 10, output_tokens: int = 10, **fields
) -> Demand:
    return Demand(
        team=t,
        key=k or key(team_id=t.id),
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        **fields,
    )


async def burst(limiter: Limiter, demands: list[Demand]) -> tuple[list[Ticket], list[LimitExceeded], float]:
    """Admit all at once; (admitted, refused, seconds the burst took)."""
    started = time.monotonic()
    results = await asyncio.gather(*(limiter.admit(d) for d in demands), return_exceptions=True)
    elapsed = time.monotonic() - started
    for result in results:
        if not isinstance(result, Ticket | LimitExceeded):
            raise result
    return [r for r in results if isinstance(r, Ticket)], [r for r in results if isinstance(r, LimitExceeded)], elapsed


async def refused(limiter: Limiter, d: Demand) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as caught:
        await limiter.admit(d)
    return caught.value


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


# ---------------------------------------------------------------- requests per minute


async def test_rpm_burst_admits_the_capacity_plus_what_refilled_then_refills(limiter: Limiter) -> None:
    t = team(requests_per_minute=50)
    admitted, rejected, elapsed = await burst(limiter, [demand(t) for _ in range(200)])

    # A full bucket of 50, plus one request per 60/50 s the burst lasted, never more.
    assert 50 <= len(admitted) <= 50 + math.floor(elapsed / 1.2)
    assert len(admitted) + len(rejected) == 200
    for error in rejected:
        assert isinstance(error, RateLimited) and error.status == 429
        assert (error.limit, error.scope) == ("requests_per_minute", "team")
        assert "requests_per_minute" in error.message and "team 'a'" in error.message
        assert int(error.headers["retry-after"]) >= 1
        assert error.headers["anthropic-ratelimit-requests-limit"] == "50"
        assert error.headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert "anthropic-ratelimit-requests-reset" in error.headers
        assert 0 < error.retry_after <= 1.2 + 1e-3
    windows = [ticket.windows["requests"] for ticket in admitted]
    assert sorted(w.remaining for w in windows)[:1] == [0] and max(w.remaining for w in windows) == 49

    # The bucket refills continuously: after the wait it names, one request passes.
    wait = (await refused(limiter, demand(t))).retry_after
    await asyncio.sleep(wait + 0.05)
    ticket = await limiter.admit(demand(t))
    assert ticket.windows["requests"].remaining == 0
    await refused(limiter, demand(t))


async def test_windows_report_only_limited_dimensions(limiter: Limiter) -> None:
    t = team(requests_per_minute=10, input_tokens_per_minute=1000, output_tokens_per_minute=100)
    ticket = await limiter.admit(demand(t, input_tokens=100, output_tokens=60))
    w = ticket.windows
    assert set(w) == {"requests", "input-tokens", "output-tokens", "tokens"}
    assert (w["requests"].limit, w["requests"].remaining) == (10, 9)
    assert (w["input-tokens"].remaining, w["output-tokens"].remaining) == (900, 40)
    assert w["tokens"] == w["output-tokens"]  # the more restrictive one
    assert w["output-tokens"].reset_seconds == pytest.approx(36, abs=0.1)

    only_rpm = await limiter.admit(demand(team("b", requests_per_minute=5)))
    assert set(only_rpm.windows) == {"requests"}
    unlimited = await limiter.admit(demand(team("c")))
    assert unlimited.windows == {} and unlimited.lease is None


# ---------------------------------------------------------------- tokens per minute


async def test_input_tokens_go_into_debt_after_an_underestimate(limiter: Limiter) -> None:
    t = team(input_tokens_per_minute=6000)  # 100 tokens a second
    # An estimate above the capacity passes a full bucket (capped at 6000)...
    ticket = await limiter.admit(demand(t, input_tokens=6500))
    assert ticket.windows["input-tokens"].remaining == 0
    # ...and settlement charges everything that was really read: 7000 → 1000 in debt.
    await limiter.settle(
        ticket, Usage(input_tokens=4000, cache_read_input_tokens=2500, cache_creation_input_tokens=500)
    )
    error = await refused(limiter, demand(t, input_tokens=1))
    assert (error.limit, error.scope) == ("input_tokens_per_minute", "team")
    assert error.retry_after == pytest.approx(10.01, abs=0.3)  # the debt (10 s) plus one token
    assert error.headers["anthropic-ratelimit-input-tokens-remaining"] == "0"
    assert error.headers["anthropic-ratelimit-tokens-remaining"] == "0"
    assert int(error.headers["retry-after"]) in (10, 11)


async def test_output_reservation_is_refunded_after_an_overestimate(limiter: Limiter) -> None:
    t = team(output_tokens_per_minute=1000)
    ticket = await limiter.admit(demand(t, output_tokens=4096))  # reserved: capped at 1000
    error = await refused(limiter, demand(t, output_tokens=1))
    assert error.limit == "output_tokens_per_minute"
    await limiter.settle(ticket, Usage(output_tokens=100))  # 900 back
    again = await limiter.admit(demand(t, output_tokens=850))
    assert again.windows["output-tokens"].remaining in (49, 50)
    await refused(limiter, demand(t, output_tokens=100))


async def test_input_estimate_is_corrected_both_ways(limiter: Limiter) -> None:
    t = team(input_tokens_per_minute=1000)
    over = await limiter.admit(demand(t, input_tokens=900))
    await limiter.settle(over, Usage(input_tokens=100))  # 800 back
    under = await limiter.admit(demand(t, input_tokens=800))
    assert under.windows["input-tokens"].remaining in (99, 100)
    await limiter.settle(under, Usage(input_tokens=850))  # 50 more
    error = await refused(limiter, demand(t, input_tokens=100))
    assert error.retry_after == pytest.approx(3.0, abs=0.3)  # 50 tokens short at 1000/min


# ---------------------------------------------------------------- key limits


async def test_key_limits_apply_within_the_team(limiter: Limiter) -> None:
    t = team(requests_per_minute=100)
    k1, k2 = key("k1", requests_per_minute=3), key("k2")
    admitted, rejected, _ = await burst(limiter, [demand(t, k1) for _ in range(10)])
    assert len(admitted) == 3 and len(rejected) == 7
    error = rejected[0]
    assert (error.limit, error.scope) == ("requests_per_minute", "key")
    assert "key 'k1' in team 'a'" in error.message
    # The headers describe the team, which still has room.
    assert error.headers["anthropic-ratelimit-requests-limit"] == "100"
    assert error.headers["anthropic-ratelimit-requests-remaining"] == "97"
    # Another key of the team is not affected; the same key in another team has its own bucket.
    assert (await limiter.admit(demand(t, k2))).windows["requests"].remaining == 96
    k1_in_b = ApiKey(
        id="k1", prefix="gk-", hash="k1", teams=("a", "b"), default_team="a", limits=Limits(requests_per_minute=3)
    )
    await limiter.admit(demand(team("b"), k1_in_b))


# ---------------------------------------------------------------- concurrency


async def test_concurrency_admits_the_limit_and_frees_slots_on_settle(limiter: Limiter) -> None:
    t = team(concurrent_requests=5)
    admitted, rejected, _ = await burst(limiter, [demand(t) for _ in range(50)])
    assert len(admitted) == 5 and len(rejected) == 45
    assert all(ticket.lease for ticket in admitted) and len({ticket.lease for ticket in admitted}) == 5
    assert {(e.limit, e.scope) for e in rejected} == {("concurrent_requests", "team")}
    assert all(int(e.headers["retry-after"]) >= 1 for e in rejected)

    await limiter.settle(admitted[0], Usage())
    replacement = await limiter.admit(demand(t))
    await refused(limiter, demand(t))
    for ticket in [*admitted[1:], replacement]:
        await limiter.settle(ticket, Usage())
    again, rejected, _ = await burst(limiter, [demand(t) for _ in range(8)])
    assert len(again) == 5


async def test_leases_expire_unless_renewed(make_limiter: Callable[..., Limiter]) -> None:
    limiter = make_limiter(lease_seconds=0.9)
    t = team(concurrent_requests=3)
    k = key(concurrent_requests=3)
    held = [await limiter.admit(demand(t, k)) for _ in range(3)]
    await refused(limiter, demand(t, k))
    # The first request lives on (renewed); the other two belong to a process that died.
    for _ in range(8):  # 1.2 s: the others' leases run out; this one is renewed every 0.15 s
        await asyncio.sleep(0.15)
        await limiter.renew(held[:1])
    second, rejected, _ = await burst(limiter, [demand(t, k) for _ in range(3)])
    assert len(second) == 2 and rejected[0].limit == "concurrent_requests"
    # A lease that has run out is not brought back by renew(): its slot is someone else's now.
    await limiter.renew(held[1:])
    await refused(limiter, demand(t, k))
    # Settling an expired ticket frees nothing that belongs to another request.
    await limiter.settle(held[1], Usage())
    await refused(limiter, demand(t, k))
    await limiter.settle(held[0], Usage())
    await limiter.admit(demand(t, k))


async def test_key_concurrency_is_a_lease_too(limiter: Limiter) -> None:
    t = team()
    k = key(concurrent_requests=2)
    first, second = await limiter.admit(demand(t, k)), await limiter.admit(demand(t, k))
    error = await refused(limiter, demand(t, k))
    assert (error.limit, error.scope) == ("concurrent_requests", "key")
    await limiter.admit(demand(t, key("k2")))  # the team itself has no limit
    await limiter.settle(first, Usage())
    await limiter.admit(demand(t, k))
    assert second.lease and not second.settled


# ---------------------------------------------------------------- budgets


async def test_daily_token_budget(limiter: Limiter) -> None:
    t = team(tokens_per_day=1000)
    first = await limiter.admit(demand(t, input_tokens=300, output_tokens=600))  # counts 900 for now
    await limiter.settle(first, Usage(input_tokens=250, output_tokens=150))  # really 400
    error = await refused(limiter, demand(t, input_tokens=700))  # 400 + 700 > 1000
    cal = calendar(time.time())
    assert (error.limit, error.scope) == ("tokens_per_day", "team")
    assert f"resets at {rfc3339(cal.next_day)}" in error.message
    assert error.retry_after == pytest.approx(cal.next_day - time.time(), abs=5)
    assert int(error.headers["retry-after"]) == pytest.approx(cal.next_day - time.time(), abs=5)
    if error.retry_after > 60:
        assert error.response_headers()["x-should-retry"] == "false"
    # What fits is admitted; the output reservation may then run over the budget...
    second = await limiter.admit(demand(t, input_tokens=600, output_tokens=4000))
    await limiter.settle(second, Usage(input_tokens=600, output_tokens=10))  # 1010 used
    # ...and once used reaches the budget nothing passes, not even an empty request.
    assert (await refused(limiter, demand(t, input_tokens=0, output_tokens=0))).limit == "tokens_per_day"
    # The budget is the team's; another team is untouched.
    await limiter.admit(demand(team("b", tokens_per_day=1000), input_tokens=900))


async def test_monthly_budgets_tokens_and_cost(limiter: Limiter) -> None:
    cal = calendar(time.time())
    tokens = team("a", tokens_per_month=5000)
    ticket = await limiter.admit(demand(tokens, input_tokens=4000, output_tokens=500))
    await limiter.settle(ticket, Usage(input_tokens=4000, output_tokens=900))
    error = await refused(limiter, demand(tokens, input_tokens=200))
    assert error.limit == "tokens_per_month" and f"resets at {rfc3339(cal.next_month)}" in error.message

    cost = team("b", cost_per_month_usd=1.0)
    ticket = await limiter.admit(demand(cost, cost_usd=0.6, input_cost_usd=0.1))
    await limiter.settle(ticket, Usage(cost_usd=0.9))
    error = await refused(limiter, demand(cost, cost_usd=0.3, input_cost_usd=0.2))  # 0.9 + 0.2 > 1.0
    assert (error.limit, error.scope) == ("cost_per_month_usd", "team")
    assert "USD" in error.message and rfc3339(cal.next_month) in error.message
    assert error.response_headers()["x-should-retry"] == "false"
    assert error.retry_after == pytest.approx(cal.next_month - time.time(), abs=5)
    small = await limiter.admit(demand(cost, cost_usd=0.3, input_cost_usd=0.05))
    await limiter.settle(small, Usage(cost_usd=0.1))  # 1.0 used: the budget is spent
    assert (await refused(limiter, demand(cost))).limit == "cost_per_month_usd"


async def test_key_budgets(limiter: Limiter) -> None:
    t = team(tokens_per_day=1_000_000)
    k = key(tokens_per_day=100)
    await limiter.admit(demand(t, k, input_tokens=50, output_tokens=50))
    error = await refused(limiter, demand(t, k, input_tokens=1))
    assert (error.limit, error.scope) == ("tokens_per_day", "key")
    await limiter.admit(demand(t, key("k2"), input_tokens=50))


async def test_a_zero_limit_refuses_everything(limiter: Limiter) -> None:
    for field in (
        "requests_per_minute",
        "input_tokens_per_minute",
        "concurrent_requests",
        "tokens_per_day",
        "cost_per_month_usd",
    ):
        error = await refused(limiter, demand(team(f"t-{field[:5]}", **{field: 0}), input_tokens=0))
        assert error.limit == field and error.retry_after is None
        assert error.response_headers()["x-should-retry"] == "false"


# ---------------------------------------------------------------- all or nothing


async def test_a_request_refused_by_one_limit_charges_no_other(limiter: Limiter) -> None:
    """LiteLLM #39309: its script incremented the counters before deciding, so refused
    requests used up the minute's requests."""
    t = team(requests_per_minute=10, input_tokens_per_minute=100_000, concurrent_requests=1, tokens_per_day=10_000)
    first = await limiter.admit(demand(t, input_tokens=100))
    _, rejected, _ = await burst(limiter, [demand(t, input_tokens=1000) for _ in range(20)])
    assert len(rejected) == 20 and {e.limit for e in rejected} == {"concurrent_requests"}
    await limiter.settle(first, Usage(input_tokens=100))
    for _ in range(9):  # all nine requests left in the bucket: the refused ones took none
        ticket = await limiter.admit(demand(t, input_tokens=100))
        assert ticket.windows["input-tokens"].remaining >= 100_000 - 1000 - 10
        await limiter.settle(ticket, Usage(input_tokens=100))
    assert (await refused(limiter, demand(t))).limit == "requests_per_minute"

    # A key's refusal does not charge its team either.
    t2 = team("b", requests_per_minute=5)
    k = key("k9", team_id="b", requests_per_minute=1)
    await limiter.admit(demand(t2, k))
    for _ in range(10):
        assert (await refused(limiter, demand(t2, k))).scope == "key"
    assert (await limiter.admit(demand(t2, key("k8", team_id="b")))).windows["requests"].remaining == 3


async def test_two_teams_are_independent(limiter: Limiter) -> None:
    busy, calm = (
        team("busy", requests_per_minute=5, concurrent_requests=2),
        team("calm", requests_per_minute=5, concurrent_requests=2),
    )
    admitted, rejected, _ = await burst(limiter, [demand(busy) for _ in range(50)])
    assert len(admitted) == 2 and rejected
    calm_admitted, calm_rejected, _ = await burst(limiter, [demand(calm) for _ in range(2)])
    assert len(calm_admitted) == 2 and not calm_rejected
    # (Two at once may reach Redis in either order: on a cluster each team has its own
    # master, and the calm one's connections are new.)
    assert sorted(ticket.windows["requests"].remaining for ticket in calm_admitted) == [3, 4]


# ---------------------------------------------------------------- count_tokens


def count(t: Team, k: ApiKey | None = None) -> Demand:
    return demand(t, k, input_tokens=0, output_tokens=0, operation=COUNT_TOKENS)


async def counts_admitted(limiter: Limiter, demands: list[Demand], room: int, per_minute: int) -> list[LimitExceeded]:
    """Admit a burst of counts that has `room` in a bucket of `per_minute`: that many pass,
    plus what refilled while the burst lasted, never more. The refusals."""
    admitted, rejected, elapsed = await burst(limiter, demands)
    assert room <= len(admitted) <= room + math.floor(elapsed * per_minute / 60), (len(admitted), elapsed)
    return rejected


async def test_count_tokens_has_a_bucket_of_its_own(limiter: Limiter) -> None:
    """One key must not be able to use up an upstream tokenizer every tenant shares, and
    counting must not cost messages: a count spends `count_tokens_per_minute` alone."""
    t = team(requests_per_minute=1, count_tokens_per_minute=5)
    admitted, rejected, elapsed = await burst(limiter, [count(t) for _ in range(20)])
    assert 5 <= len(admitted) <= 5 + math.floor(elapsed / 12)
    assert rejected
    for error in rejected:
        assert (error.status, error.limit, error.scope) == (429, "count_tokens_per_minute", "team")
        assert error.message.startswith("Rate limit exceeded: count_tokens_per_minute of team 'a' (5 count_tokens")
        assert 0 < error.retry_after <= 12 + 1e-3 and int(error.headers["retry-after"]) >= 1
        # The headers of a count are its own bucket's, as a messages answer's are the requests'.
        assert error.headers["anthropic-ratelimit-requests-limit"] == "5"
        assert error.headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert "anthropic-ratelimit-requests-reset" in error.headers
    assert all(set(ticket.windows) == {"requests"} and ticket.lease is None for ticket in admitted)

    # The minute's one messages request is still there, and spending it leaves counts alone.
    ticket = await limiter.admit(demand(t))
    assert (ticket.windows["requests"].limit, ticket.windows["requests"].remaining) == (1, 0)
    assert (await refused(limiter, demand(t))).limit == "requests_per_minute"
    both = team("b", requests_per_minute=2, count_tokens_per_minute=2)
    for _ in range(2):
        await limiter.admit(demand(both))
    assert [(await limiter.admit(count(both))).windows["requests"].remaining for _ in range(2)] == [1, 0]
    assert (await refused(limiter, count(both))).limit == "count_tokens_per_minute"

    zero = await refused(limiter, count(team("c", count_tokens_per_minute=0)))
    assert zero.retry_after is None and zero.response_headers()["x-should-retry"] == "false"


async def test_count_tokens_is_limited_by_default(make_limiter: Callable[..., Limiter]) -> None:
    limiter = make_limiter(count_tokens_per_minute=3)
    rejected = await counts_admitted(limiter, [count(team("none")) for _ in range(10)], 3, 3)  # a team with no limits
    assert {(e.limit, e.scope) for e in rejected} == {("count_tokens_per_minute", "team")}
    # A team's own limit stands in for the default.
    await counts_admitted(limiter, [count(team("own", count_tokens_per_minute=6)) for _ in range(10)], 6, 6)
    # A key's narrows its team's, the default included.
    narrow, other = key("narrow", "keyed", count_tokens_per_minute=1), key("other", "keyed")
    await limiter.admit(count(team("keyed"), narrow))
    assert (await refused(limiter, count(team("keyed"), narrow))).scope == "key"
    await counts_admitted(limiter, [count(team("keyed"), other) for _ in range(5)], 2, 3)
    # The default is count_tokens' alone: messages of a team with no limits charge nothing.
    assert (await limiter.admit(demand(team("none")))).charged == {}

    unlimited = make_limiter(count_tokens_per_minute=None)
    admitted, rejected, _ = await burst(unlimited, [count(team("none")) for _ in range(50)])
    assert len(admitted) == 50 and not rejected and all(ticket.windows == {} for ticket in admitted)


async def test_the_default_count_limit_takes_claude_codes_context_burst(limiter: Limiter) -> None:
    # `/context` in Claude Code sends about 26 count_tokens requests at once.
    admitted, rejected, _ = await burst(limiter, [count(team()) for _ in range(26)])
    assert len(admitted) == 26 and not rejected
    assert {ticket.windows["requests"].limit for ticket in admitted} == {DEFAULT_COUNT_TOKENS_PER_MINUTE}


# ---------------------------------------------------------------- settlement and usage


async def test_settle_is_idempotent(limiter: Limiter) -> None:
    t = team(output_tokens_per_minute=1000, concurrent_requests=2)
    ticket = await limiter.admit(demand(t, output_tokens=1000))
    other = await limiter.admit(demand(t, output_tokens=0))
    usage = Usage(input_tokens=5, output_tokens=100)
    await limiter.settle(ticket, usage)
    await limiter.settle(ticket, usage)  # nothing: no second refund, no second record
    assert ticket.settled
    refunded = await limiter.admit(demand(t, output_tokens=0))
    assert refunded.windows["output-tokens"].remaining in (899, 900)
    await refused(limiter, demand(t))  # `other` still holds its slot
    await limiter.settle(other, Usage())
    rows = await limiter.usage("a", today(), today())
    assert [(r["requests"], r["input"], r["output"]) for r in rows] == [(2, 5, 100)]


async def test_settle_inline_settles_at_once_or_leaves_all_of_it_to_settle_many(limiter: Limiter) -> None:
    """`Admission` settles a ticket there and then when the limiter can (in this process),
    else in a batch; either way exactly once, its lease freed."""
    t = team(concurrent_requests=1)
    ticket = await limiter.admit(demand(t))
    usage = Usage(input_tokens=7, output_tokens=3)
    inline = limiter.settle_inline(ticket, usage)
    assert inline is isinstance(limiter, MemoryLimiter)  # the Redis limiters: a round trip each
    assert ticket.settled is inline
    if not inline:
        await refused(limiter, demand(t))  # nothing was done: the lease is still held
    await limiter.settle_many([(ticket, usage)])
    assert limiter.settle_inline(ticket, usage) is inline  # and settled: nothing more
    rows = await limiter.usage("a", today(), today())
    assert [(r["requests"], r["input"], r["output"]) for r in rows] == [(1, 7, 3)]
    await limiter.settle(await limiter.admit(demand(t)), Usage())  # the slot is free


async def test_usage_is_the_exact_sum_of_what_was_settled(limiter: Limiter) -> None:
    t = team(
        requests_per_minute=10_000, input_tokens_per_minute=10_000_000, tokens_per_day=10**9, cost_per_month_usd=1000.0
    )
    keys = [key(f"k{i}") for i in range(3)]
    models = ["claude-a", "claude-b"]
    plan = [(keys[i % 3], models[i % 2], i) for i in range(150)]

    async def one(k: ApiKey, model: str, i: int) -> Usage:
        ticket = await limiter.admit(demand(t, k, model=model, input_tokens=100, output_tokens=500, cost_usd=0.01))
        await asyncio.sleep(0)
        usage = Usage(
            input_tokens=i,
            output_tokens=2 * i,
            cache_read_input_tokens=i % 7,
            cache_creation_input_tokens=i % 3,
            cost_usd=i / 1000,
        )
        await limiter.settle(ticket, usage)
        await limiter.settle(ticket, usage)
        return usage

    usages = await asyncio.gather(*(one(*p) for p in plan))
    rows = await limiter.usage("a", today(), today())
    assert [(r["day"], r["key"], r["model"]) for r in rows] == [
        (today(), k.id, m) for k in keys for m in models if any(p[0] is k and p[1] == m for p in plan)
    ]
    for row in rows:
        mine = [u for (k, m, _), u in zip(plan, usages, strict=True) if k.id == row["key"] and m == row["model"]]
        assert row["requests"] == len(mine)
        assert row["input"] == sum(u.input_tokens for u in mine)
        assert row["output"] == sum(u.output_tokens for u in mine)
        assert row["cache_read"] == sum(u.cache_read_input_tokens for u in mine)
        assert row["cache_creation"] == sum(u.cache_creation_input_tokens for u in mine)
        assert row["cost"] == pytest.approx(sum(u.cost_usd for u in mine))
    assert await limiter.usage("b", today(), today()) == []
    assert await limiter.usage("a", "2001-01-01", "2001-01-31") == []
    with pytest.raises(InvalidRequest):
        await limiter.usage("a", "2025-13-01", "2025-12-31")


async def test_requests_without_limits_still_record_usage(limiter: Limiter) -> None:
    ticket = await limiter.admit(demand(team()))
    assert ticket.charged == {} and ticket.windows == {}
    await limiter.settle(ticket, Usage(input_tokens=3, output_tokens=4, cost_usd=0.5))
    rows = await limiter.usage("a", today(), today())
    assert rows == [
        {
            "day": today(),
            "key": "k1",
            "model": "m",
            "requests": 1,
            "input": 3,
            "output": 4,
            "cache_read": 0,
            "cache_creation": 0,
            "cost": 0.5,
        }
    ]


async def test_open_limiter_picks_by_store(redis_url: str) -> None:
    memory = open_limiter(MemoryStoreConfig(), LimitsConfig(lease_seconds=5))
    assert isinstance(memory, MemoryLimiter) and memory.lease_seconds == 5
    guarded = open_limiter(
        RedisStoreConfig(type="redis", url=redis_url, prefix="cfg"),
        LimitsConfig(on_store_error="fail_open", fallback_share=3),
    )
    try:
        assert isinstance(guarded, GuardedLimiter) and isinstance(guarded.primary, RedisLimiter)
        await guarded.admit(demand(team(requests_per_minute=5)))
        raw = Redis.from_url(redis_url)
        assert await raw.exists("{cfg:t:a}:rpm") == 1
        await raw.aclose()
    finally:
        await guarded.close()


# ---------------------------------------------------------------- Redis only


async def test_redis_every_key_is_under_its_team_hash_tag(redis_url: str) -> None:
    limiter = RedisLimiter.from_url(redis_url, prefix=PREFIX)
    everything = dict(
        requests_per_minute=100,
        input_tokens_per_minute=10_000,
        output_tokens_per_minute=10_000,
        concurrent_requests=10,
        tokens_per_day=100_000,
        tokens_per_month=1_000_000,
        cost_per_month_usd=100.0,
    )
    try:
        for team_id in ("a", "b.c"):
            t = team(team_id, **everything)
            k = key("key_1", team_id=team_id, **everything)
            ticket = await limiter.admit(demand(t, k, cost_usd=0.1))
            held = await limiter.admit(demand(t, k))
            await limiter.renew([held])
            await limiter.settle(ticket, Usage(input_tokens=20, output_tokens=5, cost_usd=0.2))
    finally:
        await limiter.close()
    raw = Redis.from_url(redis_url)
    names = sorted([name.decode() async for name in raw.scan_iter(count=1000)])
    await raw.aclose()
    assert names and all(n.startswith(("{test:t:a}:", "{test:t:b.c}:")) for n in names), names
    day, month = today(), today()[:7]
    assert {
        f"{{test:t:a}}:{s}"
        for s in (
            "rpm",
            "itpm",
            "otpm",
            "conc",
            f"tpd:{day}",
            f"tpmo:{month}",
            f"cpmo:{month}",
            f"usage:{day}",
            "k:key_1:rpm",
            "k:key_1:conc",
            f"k:key_1:tpd:{day}",
        )
    } <= set(names)


def counting_client(url: str, sent: list[bytes]) -> Redis:
    class Counting(Connection):
        async def send_packed_command(self, command, check_health: bool = True) -> None:
            sent.append(command)
            await super().send_packed_command(command, check_health)

    return Redis(connection_pool=ConnectionPool.from_url(url, connection_class=Counting))


async def commands(raw: Redis) -> int:
    """Scripts the server has run (the commands a script runs count apart)."""
    stats = await raw.info("commandstats")
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


async def test_redis_admission_and_settlement_are_one_round_trip_each(redis_url: str) -> None:
    sent: list[bytes] = []
    limiter = RedisLimiter(counting_client(redis_url, sent), prefix=PREFIX)
    raw = Redis.from_url(redis_url)
    t = team(
        requests_per_minute=100,
        input_tokens_per_minute=10_000,
        output_tokens_per_minute=10_000,
        concurrent_requests=10,
        tokens_per_day=100_000,
        cost_per_month_usd=10.0,
    )
    k = key(requests_per_minute=50, concurrent_requests=5, tokens_per_month=10_000)
    try:
        warm = await limiter.admit(demand(t, k))  # connects and loads the scripts once
        await limiter.settle(warm, Usage())
        await limiter.renew([await limiter.admit(demand(t, k))])
        calls = (await raw.info("commandstats"))["cmdstat_evalsha"]["calls"]
        sent.clear()

        # Admissions and settlements go over the limiter's own connection: one script each.
        base = await commands(raw)
        ticket = await limiter.admit(demand(t, k))
        assert await commands(raw) == base + 1
        await limiter.settle(ticket, Usage(input_tokens=3, output_tokens=7))
        assert await commands(raw) == base + 2
        await refused(limiter, demand(team("z", requests_per_minute=0)))
        assert await commands(raw) == base + 3
        await limiter.settle(await limiter.admit(demand(team("free"))), Usage())  # no limits: the same
        assert await commands(raw) == base + 5
        assert sent == []
        # renew(): one pipeline for any number of tickets and teams.
        held = [await limiter.admit(demand(t, k)) for _ in range(3)]
        held.append(await limiter.admit(demand(team("y", concurrent_requests=3))))
        sent.clear()
        await limiter.renew(held)
        assert len(sent) == 1
        assert (await raw.info("commandstats"))["cmdstat_evalsha"]["calls"] == calls + 5 + 4 + 2
    finally:
        await raw.aclose()
        await limiter.close()


async def test_redis_time_decides_not_the_process_clock(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    one = RedisLimiter.from_url(redis_url, prefix=PREFIX)
    two = RedisLimiter.from_url(redis_url, prefix=PREFIX)
    try:
        # Two limiters (two processes) on one Redis share every bucket exactly.
        t = team(requests_per_minute=10)
        results = await asyncio.gather(*(lim.admit(demand(t)) for lim in [one, two] * 15), return_exceptions=True)
        assert sum(isinstance(r, Ticket) for r in results) == 10

        # A process whose clock is a year off changes nothing: the day is Redis's.
        monkeypatch.setattr(time, "time", lambda: 1_000_000_000.0)  # 2001-09-09
        ticket = await one.admit(demand(team("b", tokens_per_day=100)))
        await two.settle(ticket, Usage(input_tokens=1))
        assert ticket.charged == {f"tpd:{today()}": ("tokens", 20)}
        assert [r["input"] for r in await two.usage("b", today(), today())] == [1]
        assert await two.usage("b", "2001-09-09", "2001-09-09") == []
    finally:
        await one.close()
        await two.close()


async def test_redis_lua_calendar_matches_python(redis_url: str) -> None:
    raw = Redis.from_url(redis_url)
    script = raw.register_script(
        _lua("renew").split("local base, lease_seconds")[0]
        + "local c = calendar(tonumber(ARGV[1])) return {c.day, c.month, c.next_day, c.next_month}"
    )
    try:
        for seconds in [0, 951_782_399, 951_782_400, 1_709_164_800, 1_767_225_599, 4_107_542_400, 1_750_000_000]:
            day, month, next_day, next_month = await script(args=[seconds])
            assert (day.decode(), month.decode(), next_day, next_month) == tuple(
                getattr(calendar(seconds), f) for f in ("day", "month", "next_day", "next_month")
            )
    finally:
        await raw.aclose()


def guarded(server: RedisServer, policy: str, share: int = 1, lease_seconds: float = 60.0) -> GuardedLimiter:
    primary = RedisLimiter.from_config(
        RedisStoreConfig(type="redis", url=server.url, prefix=PREFIX),
        LimitsConfig(lease_seconds=max(3.0, lease_seconds)),
        socket_timeout=0.3,
    )
    return GuardedLimiter(
        primary, on_store_error=policy, fallback_share=share, lease_seconds=lease_seconds, probe_interval=0.2
    )


async def test_redis_down_fail_closed_refuses_then_recovers() -> None:
    with RedisServer() as server:
        limiter = guarded(server, "fail_closed")
        t = team(requests_per_minute=100)
        try:
            ticket = await limiter.admit(demand(t))
            server.kill()
            for _ in range(3):
                with pytest.raises(Overloaded) as caught:
                    await limiter.admit(demand(t))
                assert caught.value.status == 529
            await limiter.settle(ticket, Usage())  # logged, never raised
            with pytest.raises(Overloaded):
                await limiter.admit(demand(team("free")))  # no limits, but nothing goes unaccounted
            with pytest.raises(Overloaded):
                await limiter.usage("a", today(), today())
            assert limiter.degraded and limiter.outages == 1

            server.start()
            await asyncio.sleep(0.25)
            ticket = await limiter.admit(demand(t))  # no restart of the limiter
            assert not limiter.degraded and ticket.windows["requests"].remaining == 99  # a fresh server
            await limiter.settle(ticket, Usage(input_tokens=1))
            await asyncio.sleep(0.05)
            # The request settled during the outage is in the usage too (not its corrections).
            rows = await limiter.usage("a", today(), today())
            assert [(r["requests"], r["input"]) for r in rows] == [(2, 1)]
        finally:
            await limiter.close()


async def test_redis_down_fail_open_uses_a_per_process_share(caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer() as server:
        limiter = guarded(server, "fail_open", share=4)
        t = team(requests_per_minute=20, concurrent_requests=8)
        try:
            await limiter.admit(demand(t))
            server.kill()
            with caplog.at_level(logging.WARNING, logger="gateway.limiter.guard"):
                admitted, rejected, _ = await burst(limiter, [demand(t) for _ in range(10)])
                await asyncio.sleep(0.25)  # past a probe: the store is tried again, still down
                admitted += (await burst(limiter, [demand(t) for _ in range(3)]))[0]
            # 8 / 4 concurrent slots in this process; every rejection is the fallback's.
            assert len(admitted) == 2 and all(ticket.fallback for ticket in admitted)
            assert {e.limit for e in rejected} == {"concurrent_requests"}
            outage_logs = [r for r in caplog.records if "unreachable" in r.getMessage()]
            assert len(outage_logs) == 1 and "per-process limits" in outage_logs[0].getMessage()
            await limiter.renew(admitted)
            for ticket in admitted:
                await limiter.settle(ticket, Usage(input_tokens=1))
            assert limiter.fallback_admissions == 13
            free = await limiter.admit(demand(team("free")))  # no limits: nothing to enforce, served
            assert not free.fallback and free.windows == {}

            server.start()
            await asyncio.sleep(0.25)
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="gateway.limiter.guard"):
                ticket = await limiter.admit(demand(t))
            assert not ticket.fallback and not limiter.degraded
            assert any("reachable again" in r.getMessage() for r in caplog.records)
            raw = Redis.from_url(server.url)
            assert await raw.zcard("{test:t:a}:conc") == 1
            await raw.aclose()
            # What the fallback served is in the shared usage once the store is back.
            await asyncio.sleep(0.05)
            rows = await limiter.usage("a", today(), today())
            assert [(r["requests"], r["input"]) for r in rows] == [(2, 2)]
        finally:
            await limiter.close()


async def test_redis_down_fail_open_counts_within_a_share_of_their_limit() -> None:
    with RedisServer() as server:
        limiter = guarded(server, "fail_open", share=4)
        try:
            server.kill()
            own = [count(team("own", count_tokens_per_minute=20)) for _ in range(10)]
            admitted, rejected, elapsed = await burst(limiter, own)
            assert 5 <= len(admitted) <= 5 + math.floor(elapsed * 5 / 60)  # 20 / 4 in this process
            assert all(ticket.fallback for ticket in admitted) and {e.limit for e in rejected} == {
                "count_tokens_per_minute"
            }
            # A team with no limits: a share of the default (300 / 4), not a free pass.
            admitted, rejected, elapsed = await burst(limiter, [count(team("none")) for _ in range(100)])
            assert 75 <= len(admitted) <= 75 + math.floor(elapsed * 75 / 60) and rejected
        finally:
            await limiter.close()


async def test_redis_hung_fails_over_within_the_socket_timeout() -> None:
    with RedisServer() as server:
        limiter = guarded(server, "fail_open", share=2)
        t = team(requests_per_minute=10)
        try:
            await limiter.admit(demand(t))
            server.pause()
            try:
                started = time.monotonic()
                ticket = await limiter.admit(demand(t))
                assert ticket.fallback and time.monotonic() - started < 2.0
                assert ticket.windows["requests"].limit == 5
            finally:
                server.resume()
            await asyncio.sleep(0.25)
            assert not (await limiter.admit(demand(t))).fallback
        finally:
            await limiter.close()


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
async def test_redis_killed_and_restarted_under_load(policy: str) -> None:
    with RedisServer() as server:
        limiter = guarded(server, policy, share=2)
        t = team(requests_per_minute=100_000, concurrent_requests=4)
        outcomes: dict[str, int] = {"admitted": 0, "limited": 0, "overloaded": 0}
        stop = asyncio.Event()

        async def worker() -> None:
            while not stop.is_set():
                try:
                    ticket = await limiter.admit(demand(t))
                except LimitExceeded:
                    outcomes["limited"] += 1
                    await asyncio.sleep(0.005)
                    continue
                except Overloaded:
                    outcomes["overloaded"] += 1
                    await asyncio.sleep(0.005)
                    continue
                outcomes["admitted"] += 1
                try:
                    await asyncio.sleep(0.01)
                finally:
                    await limiter.settle(ticket, Usage(output_tokens=1))

        try:
            workers = [asyncio.create_task(worker()) for _ in range(12)]
            await asyncio.sleep(0.3)
            server.kill()
            await asyncio.sleep(0.3)
            server.start()
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*workers)  # no worker saw anything but a 429 or a 529

            assert outcomes["admitted"] and outcomes["limited"]
            assert bool(outcomes["overloaded"]) == (policy == "fail_closed")
            assert not limiter.degraded and limiter.outages == 1
            raw = Redis.from_url(server.url)
            try:
                assert await raw.zcard("{test:t:a}:conc") == 0  # no stuck slots
            finally:
                await raw.aclose()
            assert len([await limiter.admit(demand(t)) for _ in range(4)]) == 4
        finally:
            await limiter.close()


# ---------------------------------------------------------------- Redis Cluster only


def cluster_limiter(
    url: str, *, lease_seconds: float = 60.0, socket_timeout: float = 2.0, count_tokens_per_minute: int | None = 300
) -> RedisLimiter:
    config = RedisStoreConfig(type="redis", mode="cluster", url=url, prefix=PREFIX)
    return RedisLimiter(
        connect(config, profile(socket_timeout)),
        prefix=PREFIX,
        lease_seconds=lease_seconds,
        count_tokens_per_minute=count_tokens_per_minute,
    )


def team_per_master(cluster: LocalRedisCluster) -> dict[int, str]:
    """A team id whose keys live on each master (by index)."""
    found: dict[int, str] = {}
    for i in range(100):
        found.setdefault(cluster.node_of(f"{{{PREFIX}:t:t{i}}}:"), f"t{i}")
        if len(found) == 3:
            return found
    raise AssertionError("the cluster's slots are not spread over three masters")


EVERYTHING = dict(
    requests_per_minute=100,
    input_tokens_per_minute=10_000,
    output_tokens_per_minute=10_000,
    concurrent_requests=10,
    tokens_per_day=100_000,
    tokens_per_month=1_000_000,
    cost_per_month_usd=100.0,
)


async def test_cluster_every_key_of_a_team_is_in_its_slot(cluster_url: str, redis_cluster: LocalRedisCluster) -> None:
    """Each script builds its names from ARGV[1], the team's tag: on a cluster every name
    must be in the slot KEYS[1] routed the call to, or Redis refuses the script."""
    homes = team_per_master(redis_cluster)
    guarded = open_limiter(
        RedisStoreConfig(type="redis", mode="cluster", url=cluster_url, prefix=PREFIX), LimitsConfig()
    )
    assert isinstance(guarded.primary._redis, RedisCluster)
    limiter = guarded.primary
    try:
        for team_id in homes.values():
            t, k = team(team_id, **EVERYTHING), key("key_1", team_id=team_id, **EVERYTHING)
            ticket = await limiter.admit(demand(t, k, cost_usd=0.1))
            held = await limiter.admit(demand(t, k))
            await limiter.renew([held])
            await limiter.settle(ticket, Usage(input_tokens=20, output_tokens=5, cost_usd=0.2))
            await limiter.add_usage(team_id, {today(): {"key_1|m|requests": 1}})
            rows = await limiter.usage(team_id, today(), today())
            assert [(r["requests"], r["input"]) for r in rows] == [(2, 20)]
    finally:
        await guarded.close()
    for node, team_id in homes.items():
        names = redis_cluster.keys(node)
        tag = f"{{{PREFIX}:t:{team_id}}}:"
        assert {
            tag + s
            for s in (
                "rpm",
                "itpm",
                "otpm",
                "conc",
                f"tpd:{today()}",
                f"usage:{today()}",
                "k:key_1:rpm",
                "k:key_1:conc",
            )
        } <= set(names)
        assert all(name.startswith(tag) for name in names), names
        assert {redis_cluster.keyslot(name) for name in names} == {redis_cluster.keyslot(tag)}


async def test_cluster_scripts_are_loaded_again_after_a_flush(
    cluster_url: str, redis_cluster: LocalRedisCluster
) -> None:
    """A restarted or failed-over master has no scripts: EVALSHA's NOSCRIPT loads them again."""
    homes = team_per_master(redis_cluster)
    limiter = cluster_limiter(cluster_url)
    teams = [team(team_id, requests_per_minute=10, concurrent_requests=5) for team_id in homes.values()]
    try:
        for round_ in range(2):
            if round_:
                for node in range(3):
                    redis_cluster.command(node, "SCRIPT", "FLUSH")
            held = [await limiter.admit(demand(t)) for t in teams]
            assert {ticket.windows["requests"].remaining for ticket in held} == {9 - round_}
            await limiter.renew(held)  # one call per team, on three masters at once
            for ticket in held:
                await limiter.settle(ticket, Usage(input_tokens=1))
    finally:
        await limiter.close()


async def test_cluster_admission_is_not_retried_after_a_timeout(
    cluster_url: str, redis_cluster: LocalRedisCluster
) -> None:
    """redis-py's cluster client retries a command after a timeout, whatever its `retry`
    says; an admission that timed out may still have run, and running it again would
    charge the team twice."""
    node, team_id = next((node, team_id) for node, team_id in team_per_master(redis_cluster).items() if node)
    limiter = cluster_limiter(cluster_url, socket_timeout=0.3)
    t = team(team_id, requests_per_minute=10)
    try:
        await limiter.admit(demand(t))  # the scripts are loaded and the slot map read
        redis_cluster.nodes[node].pause()
        try:
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                await limiter.admit(demand(t))
            assert time.monotonic() - started < 0.55  # one socket timeout, not two
        finally:
            redis_cluster.nodes[node].resume()
        await asyncio.sleep(0.1)  # the master runs what reached it before it hung
        ticket = await limiter.admit(demand(t))
        # The warm-up, at most one run of the timed-out admission, this one.
        assert ticket.windows["requests"].remaining >= 7
    finally:
        await limiter.close()


async def test_cluster_that_cannot_be_reached_is_an_outage() -> None:
    """No node answers: redis-py raises RedisClusterException, which is no RedisError; the
    guard must still see an outage (529 under fail_closed), never a 500."""
    primary = cluster_limiter(f"redis://127.0.0.1:{free_port()}", socket_timeout=0.3)
    limiter = GuardedLimiter(primary, on_store_error="fail_closed", probe_interval=0.2)
    try:
        with pytest.raises(Overloaded):
            await limiter.admit(demand(team(requests_per_minute=5)))
        assert limiter.degraded
    finally:
        await limiter.close()
