"""The shared limiter behind a policy for when its store cannot be reached.

`fail_closed`: every admission is refused with `Overloaded` (529, which clients retry),
with or without limits: nothing is served that could not be accounted for. `fail_open`: they are served by a per-process
`MemoryLimiter` applying each limit divided by `fallback_share` (the number of gateway
processes is the natural value), so the fleet as a whole stays near the limits.

An outage is logged once, when it starts, and once when it ends. During one, the store
is tried again at most every `probe_interval` seconds (a dead or hung Redis must not
cost every request a timeout); the first success ends it, with no restart.

Under fail_open, requests with no limit at all do not touch the store at admission
(there is nothing to enforce); they still settle there, for their usage records.
Tickets remember who admitted them: a fallback ticket settles in the fallback. A
settlement the store cannot take loses its corrections (its lease expires by itself) but
not its usage record: usage counted during an outage (by the fallback, or of requests
that could not settle) is held here and added to Redis when it is back (`flush()`).
Only a settlement that timed out is dropped whole: it may have run, and usage must not
count twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import Overloaded
from gateway.identity import Limits
from gateway.limiter.base import Demand, Ticket, Usage
from gateway.limiter.memory import MemoryLimiter
from gateway.limiter.redis import RedisLimiter
from gateway.limiter.rules import divided, has_limits
from gateway.redis.observer import Observer

log = logging.getLogger(__name__)

STORE_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
PROBE_INTERVAL = 1.0


class GuardedLimiter:
    def __init__(
        self,
        primary: RedisLimiter,
        *,
        on_store_error: str = "fail_closed",
        fallback_share: int = 1,
        lease_seconds: float = 60.0,
        probe_interval: float = PROBE_INTERVAL,
    ) -> None:
        self.primary = primary
        self.kind = primary.kind
        self.on_store_error = on_store_error
        self.fallback_share = fallback_share
        self.count_tokens_per_minute = primary.count_tokens_per_minute  # (a team's when it sets none)
        fallback_count = self.count_tokens_per_minute
        if fallback_count:  # this process's share of it, as every other limit
            fallback_count = max(1, fallback_count // fallback_share)
        self.fallback = MemoryLimiter(lease_seconds=lease_seconds, count_tokens_per_minute=fallback_count)
        self._probe_interval = probe_interval
        self._retry_at = 0.0  # monotonic: before it, the store is not tried
        self.degraded = False  # in an outage now
        # For metrics: outages begun; admissions served by the fallback; refused for the outage.
        self.outages = 0
        self.fallback_admissions = 0
        self.refused_admissions = 0
        self.lost_settlements = 0
        # Told of each call to the store (`round_trip`) and of the events above
        # (`limiter_event`); set by the app to its metrics (`metrics.RedisObserver`).
        self.observer: Observer | None = None
        self._shares: dict[Limits, Limits] = {}
        # Usage not yet in Redis: (team, day) → `<key>|<model>|<field>` → total.
        self._pending: dict[tuple[str, str], dict[str, float]] = {}
        self._flushing: asyncio.Task | None = None

    async def admit(self, demand: Demand) -> Ticket:
        if self.on_store_error == "fail_open" and not has_limits(demand, self.count_tokens_per_minute):
            return Ticket(lease=None, demand=demand, charged={}, windows={})  # nothing to enforce
        if self.degraded and time.monotonic() < self._retry_at:
            return await self._without_store(demand)
        # Timed here rather than through `_call`: one coroutine less on every request.
        started = time.perf_counter()
        try:
            ticket = await self.primary.admit(demand)
        except Exception as exc:  # a refusal (LimitExceeded) is an answer: a round trip like any
            if self.observer is not None:
                self.observer.round_trip("limiter", "admit", time.perf_counter() - started, exc)
            if not isinstance(exc, STORE_ERRORS):
                raise
            self._lost(exc)
            return await self._without_store(demand)
        if self.observer is not None:
            self.observer.round_trip("limiter", "admit", time.perf_counter() - started)
        self._back()
        return ticket

    async def settle(self, ticket: Ticket, usage: Usage) -> None:
        await self.settle_many([(ticket, usage)])

    def settle_inline(self, ticket: Ticket, usage: Usage) -> bool:
        return False  # the store's tickets take a round trip; all go through `settle_many`

    async def settle_many(self, settlements: Sequence[tuple[Ticket, Usage]]) -> None:
        """`settle` each (ticket, usage); those for the store in one round trip (see
        `RedisLimiter.settle_each`), each failure handled on its own. An error that is
        not the store's is raised once all the others are settled."""
        shared: list[tuple[Ticket, Usage]] = []
        for ticket, usage in settlements:
            if ticket.fallback:
                await self.fallback.settle(ticket, usage)
            elif ticket.settled:
                continue
            elif self.degraded and time.monotonic() < self._retry_at:
                ticket.settled = True
                self.fallback.record_usage(ticket.demand, usage)
            else:
                shared.append((ticket, usage))
        if not shared:
            return
        started = time.perf_counter()
        try:
            errors = await self.primary.settle_each(shared)
        except Exception as exc:  # (a bug: store errors come back one by one)
            errors = [exc] * len(shared)
        # Each settlement is one round trip for the observer, of the batch's time.
        seconds = time.perf_counter() - started
        observer, unexpected = self.observer, None
        for (ticket, usage), error in zip(shared, errors, strict=True):  # in the order the replies came
            if observer is not None:
                observer.round_trip("limiter", "settle", seconds, error)
            if error is None:
                self._back()
            elif isinstance(error, STORE_ERRORS):
                self._settlement_failed(ticket, usage, error)
            elif unexpected is None:
                unexpected = error
        if unexpected is not None:
            raise unexpected

    def _settlement_failed(self, ticket: Ticket, usage: Usage, exc: BaseException) -> None:
        self._lost(exc)
        if isinstance(exc, RedisTimeoutError | asyncio.TimeoutError):
            self.lost_settlements += 1
            self._event("lost_settlement")
            log.warning("limiter: a settlement of team '%s' timed out; its usage may be missing", ticket.demand.team.id)
        else:
            self.fallback.record_usage(ticket.demand, usage)

    async def renew(self, tickets: Iterable[Ticket]) -> None:
        tickets = list(tickets)
        await self.fallback.renew(t for t in tickets if t.fallback)
        shared = [t for t in tickets if not t.fallback]
        if not shared:
            return
        try:
            await self._call("renew", self.primary.renew, shared)
        except STORE_ERRORS as exc:
            self._lost(exc)
            return
        self._back()

    async def usage(self, team: str, since_day: str, until_day: str) -> list[dict]:
        try:
            return await self._call("usage", self.primary.usage, team, since_day, until_day)
        except STORE_ERRORS as exc:
            self._lost(exc)
            raise Overloaded("usage records are unavailable: the limiter's store cannot be reached") from None

    async def flush(self) -> None:
        """Add the usage counted while the store was away to Redis (a team's records in
        one transaction; what fails stays for the next try)."""
        for (team, day), fields in self.fallback.take_usage().items():
            held = self._pending.setdefault((team, day), {})
            for field, value in fields.items():
                held[field] = held.get(field, 0) + value
        teams = sorted({team for team, _ in self._pending})
        for team in teams:
            days = {day: fields for (t, day), fields in self._pending.items() if t == team}
            try:
                await self._call("add_usage", self.primary.add_usage, team, days)
            except STORE_ERRORS as exc:
                self._lost(exc)
                return
            for day in days:
                del self._pending[(team, day)]

    async def close(self) -> None:
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        if not self.degraded:
            await self.flush()
        if self._pending:
            log.warning("limiter: closing with usage of %d team-days not recorded in the store", len(self._pending))
        await self.primary.close()
        await self.fallback.close()

    async def _without_store(self, demand: Demand) -> Ticket:
        if self.on_store_error != "fail_open":
            self.refused_admissions += 1
            self._event("refused_admission")
            raise Overloaded("the rate limiter's store cannot be reached; try again shortly")
        self.fallback_admissions += 1
        self._event("fallback_admission")
        share = dataclasses.replace(
            demand,
            team=demand.team.model_copy(update={"limits": self._share(demand.team.limits)}),
            key=demand.key.model_copy(update={"limits": self._share(demand.key.limits)}),
        )
        ticket = await self.fallback.admit(share)
        ticket.fallback = True
        ticket.demand = demand
        return ticket

    async def _call(self, operation: str, call, *args):
        """`call(*args)` on the store, timed for the observer when there is one."""
        observer = self.observer
        if observer is None:
            return await call(*args)
        started = time.perf_counter()
        try:
            result = await call(*args)
        except Exception as exc:  # a refusal (LimitExceeded) is an answer: a round trip like any
            observer.round_trip("limiter", operation, time.perf_counter() - started, exc)
            raise
        observer.round_trip("limiter", operation, time.perf_counter() - started)
        return result

    def _event(self, name: str) -> None:
        if self.observer is not None:
            self.observer.limiter_event(name)

    def _share(self, limits: Limits) -> Limits:
        found = self._shares.get(limits)
        if found is None:
            if len(self._shares) > 10_000:
                self._shares.clear()
            found = self._shares[limits] = divided(limits, self.fallback_share)
        return found

    def _lost(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + self._probe_interval
        if self.degraded:
            return
        self.degraded = True
        self.outages += 1
        self._event("outage")
        if self.on_store_error == "fail_open":
            log.warning(
                "limiter: the store is unreachable (%s); serving with per-process limits (each divided by %d) "
                "until it is back",
                exc or type(exc).__name__,
                self.fallback_share,
            )
        else:
            log.warning(
                "limiter: the store is unreachable (%s); refusing requests until it is back", exc or type(exc).__name__
            )

    def _back(self) -> None:
        if self.degraded:
            self.degraded = False
            self._event("recovered")
            log.warning("limiter: the store is reachable again; shared limits are enforced")
            if self._flushing is None or self._flushing.done():
                self._flushing = asyncio.get_running_loop().create_task(self.flush())
