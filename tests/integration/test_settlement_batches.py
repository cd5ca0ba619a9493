"""Settlements asked for in one turn of the event loop leave together (`Admission`,
`GuardedLimiter.settle_many`, `RedisLimiter.settle_each`): each ticket still settles
exactly once, each failure is handled on its own, and shutdown waits for all of them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from redis.asyncio import Redis

from gateway.admission import Admission
from gateway.config import LimitsConfig, RedisStoreConfig
from gateway.identity import ApiKey, Limits, Team
from gateway.limiter.base import Demand, Usage
from gateway.limiter.guard import GuardedLimiter
from gateway.limiter.redis import RedisLimiter
from tests.support import binaries
from tests.support.redis_server import RedisServer

pytestmark = binaries.needs("redis-server", how="apt-get install redis-server")

PREFIX = "batch"
LIMITS = Limits(requests_per_minute=1000, input_tokens_per_minute=100_000, concurrent_requests=50, tokens_per_day=10**9)


def demand(team_id: str = "a", limits: Limits = LIMITS) -> Demand:
    key = ApiKey(id="k1", prefix="gk-", hash="k1", teams=(team_id,), default_team=team_id)
    return Demand(team=Team(id=team_id, limits=limits), key=key, model="m", input_tokens=10, output_tokens=10)


def guarded(url: str, **options) -> GuardedLimiter:
    primary = RedisLimiter.from_config(
        RedisStoreConfig(type="redis", url=url, prefix=PREFIX), LimitsConfig(lease_seconds=60), socket_timeout=0.3
    )
    return GuardedLimiter(primary, probe_interval=0.2, **options)


class Observer:
    def __init__(self) -> None:
        self.settles: list[BaseException | None] = []

    def round_trip(self, component: str, operation: str, seconds: float, error: BaseException | None = None) -> None:
        if operation == "settle":
            self.settles.append(error)

    def limiter_event(self, event: str) -> None:
        pass


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


async def test_settlements_of_one_turn_are_one_task_and_each_counts_once(redis_url: str) -> None:
    limiter = guarded(redis_url)
    limiter.observer = observer = Observer()
    admission = Admission(limiter)
    raw = Redis.from_url(redis_url)
    try:
        tickets = [await admission.admit(demand()) for _ in range(5)]
        assert await raw.zcard("{batch:t:a}:conc") == 5
        for ticket in tickets:
            admission.settle(ticket, Usage(input_tokens=3, output_tokens=2))
        admission.settle(tickets[0], Usage(input_tokens=100))  # a second time: nothing
        await asyncio.sleep(0)
        assert len(admission._settling) == 1
        await admission.drain()
        assert all(ticket.settled for ticket in tickets)
        assert observer.settles == [None] * 5  # one round trip each for the metrics
        assert await raw.zcard("{batch:t:a}:conc") == 0
        [row] = await limiter.usage("a", today(), today())
        assert (row["requests"], row["input"], row["output"]) == (5, 15, 10)
        assert float(await raw.get(f"{{batch:t:a}}:tpd:{today()}")) == 25  # corrected from 20 each
    finally:
        await raw.aclose()
        await limiter.close()


async def test_drain_sends_what_is_still_queued(redis_url: str) -> None:
    limiter = guarded(redis_url)
    admission = Admission(limiter)
    try:
        ticket = await admission.admit(demand())
        admission.settle(ticket, Usage(output_tokens=1))
        await admission.drain()  # in the same turn: not sent yet when drain() starts
        assert ticket.settled
        assert [row["requests"] for row in await limiter.usage("a", today(), today())] == [1]
    finally:
        await limiter.close()


async def test_drain_waits_for_settlements_asked_for_while_it_waits(redis_url: str) -> None:
    limiter = guarded(redis_url)
    admission = Admission(limiter)
    try:
        first, late = await admission.admit(demand()), await admission.admit(demand())
        admission.settle(first, Usage())

        async def finish_late() -> None:
            await asyncio.sleep(0)  # while drain() waits for the first
            admission.settle(late, Usage())

        finishing = asyncio.create_task(finish_late())
        await admission.drain()
        await finishing
        assert first.settled and late.settled
        assert [row["requests"] for row in await limiter.usage("a", today(), today())] == [2]
    finally:
        await limiter.close()


async def test_a_batch_mixes_teams_and_reloads_its_script_after_a_flush(redis_url: str, redis_server) -> None:
    limiter = guarded(redis_url)
    try:
        tickets = [await limiter.admit(demand(team)) for team in ("a", "b", "a", "c")]
        assert redis_server.command("SCRIPT", "FLUSH") == "+OK"
        await limiter.settle_many([(ticket, Usage(input_tokens=1)) for ticket in tickets])
        assert not limiter.degraded
        for team, requests in (("a", 2), ("b", 1), ("c", 1)):
            assert [row["requests"] for row in await limiter.usage(team, today(), today())] == [requests]
    finally:
        await limiter.close()


async def test_a_batch_the_store_cannot_take_keeps_each_usage_for_later() -> None:
    with RedisServer() as server:
        limiter = guarded(server.url, on_store_error="fail_open")
        limiter.observer = observer = Observer()
        try:
            tickets = [await limiter.admit(demand()) for _ in range(3)]
            server.kill()
            await limiter.settle_many([(ticket, Usage(output_tokens=2)) for ticket in tickets])
            assert limiter.degraded and limiter.outages == 1 and limiter.lost_settlements == 0
            assert len(observer.settles) == 3 and all(error is not None for error in observer.settles)
            [(name, fields)] = limiter.fallback.take_usage().items()
            assert name == ("a", today()) and fields["k1|m|requests"] == 3 and fields["k1|m|output"] == 6
        finally:
            await limiter.close()


async def test_a_batch_that_times_out_is_lost_whole_and_counted() -> None:
    with RedisServer() as server:
        limiter = guarded(server.url, on_store_error="fail_open")
        try:
            tickets = [await limiter.admit(demand()) for _ in range(3)]
            server.pause()
            await limiter.settle_many([(ticket, Usage(output_tokens=2)) for ticket in tickets])
            assert limiter.lost_settlements == 3  # they may have run: nothing kept to add again
            assert limiter.fallback.take_usage() == {}
        finally:
            server.resume()
            await limiter.close()


async def test_new_limits_apply_to_the_next_admission(redis_url: str) -> None:
    """Admissions reuse what one team's and key's limits make; other limits make anew."""
    limiter = RedisLimiter.from_url(redis_url, prefix=PREFIX)
    try:
        first = await limiter.admit(demand(limits=Limits(requests_per_minute=5)))
        assert first.windows["requests"].limit == 5 and first.lease is None
        second = await limiter.admit(demand(limits=Limits(requests_per_minute=7, concurrent_requests=1)))
        assert second.windows["requests"].limit == 7 and second.lease is not None
        assert set(second.charged) == {"rpm", "conc"}
    finally:
        await limiter.close()
