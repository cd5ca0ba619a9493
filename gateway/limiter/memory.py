"""The limiter for one process: the arithmetic of `limiter/rules.py` on dicts, with
`time.time()` as the clock. Each call runs to completion without awaiting, so on one
event loop an admission is atomic, as the Redis script is. It gives the same answers as
`RedisLimiter` for a single process; it is also the per-process fallback when Redis is
unreachable (`limiter/guard.py`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence

from gateway.identity import DEFAULT_COUNT_TOKENS_PER_MINUTE
from gateway.limiter.base import Demand, Ticket, Usage, rejection
from gateway.limiter.rules import (
    USAGE_FIELDS,
    USAGE_TTL,
    budget_reset,
    calendar,
    charged_for,
    checks_for,
    corrections,
    counter_expiry,
    dated,
    gcra_admit,
    pick_failure,
    shift_tat,
    team_windows,
    usage_days,
    usage_rows,
    usage_values,
)
from gateway.redis.observer import Observer

# Admissions between two sweeps of expired state.
SWEEP_EVERY = 10_000


def new_lease_id() -> str:
    # Unique among the leases of a team (72 random bits; each process's generator is
    # seeded from the OS), not secret: no system call per request.
    return f"{random.getrandbits(72):018x}"


class MemoryLimiter:
    kind = "memory"

    def __init__(
        self,
        *,
        lease_seconds: float = 60.0,
        count_tokens_per_minute: int | None = DEFAULT_COUNT_TOKENS_PER_MINUTE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`count_tokens_per_minute`: a team's when its limits set none."""
        self.lease_seconds = lease_seconds
        self.count_tokens_per_minute = count_tokens_per_minute
        self._clock = clock
        # Names are (team id, bucket name), the bucket name as in Redis without the tag.
        self._tats: dict[tuple[str, str], float] = {}
        self._leases: dict[tuple[str, str], dict[str, float]] = {}  # lease id → expiry
        self._counters: dict[tuple[str, str], list[float]] = {}  # [value, expiry]
        self._usage: dict[tuple[str, str], dict[str, float]] = {}  # (team, day) → field → value
        self._usage_expiry: dict[tuple[str, str], float] = {}
        self._admissions = 0
        # Never told anything: nothing here makes a round trip.
        self.observer: Observer | None = None

    async def admit(self, demand: Demand) -> Ticket:
        now = self._clock()
        checks = checks_for(demand, self.count_tokens_per_minute)
        if not checks:
            return Ticket(lease=None, demand=demand, charged={}, windows={})
        self._admissions += 1
        if self._admissions % SWEEP_EVERY == 0:
            self._sweep(now)
        team = demand.team.id
        cal = calendar(now)
        failures: list[tuple[int, float | None]] = []
        before: dict[str, float | None] = {}
        after: dict[str, float] = {}
        for i, check in enumerate(checks):
            if check.kind == "rate":
                before[check.name] = self._tats.get((team, check.name))
                if check.limit <= 0:
                    failures.append((i, None))
                    continue
                ok, tat, retry = gcra_admit(before[check.name], now, check.limit, check.cost)
                if ok:
                    after[check.name] = tat
                else:
                    failures.append((i, retry))
            elif check.limit <= 0:
                failures.append((i, None))
            elif check.kind == "conc":
                live = sum(1 for expiry in self._leases.get((team, check.name), {}).values() if expiry > now)
                if live >= check.limit:
                    failures.append((i, 1.0))
            else:
                used = self._counter(team, dated(check, cal), now)
                if used >= check.limit or used + check.need > check.limit:
                    failures.append((i, budget_reset(check, cal) - now))
        if failures:
            index, wait = pick_failure(failures)
            failed = checks[index]
            raise rejection(
                limit=failed.field,
                scope=failed.scope,
                value=failed.limit,
                team=team,
                key=demand.key.id,
                retry_after=wait,
                now=now,
                windows=team_windows(checks, before, now),
            )
        lease = new_lease_id() if any(check.kind == "conc" for check in checks) else None
        for check in checks:
            if check.kind == "rate":
                self._tats[(team, check.name)] = after[check.name]
            elif check.kind == "conc":
                assert lease is not None  # made above whenever a concurrency check is among them
                leases = self._leases.setdefault((team, check.name), {})
                for held, expiry in list(leases.items()):
                    if expiry <= now:
                        del leases[held]
                leases[lease] = now + self.lease_seconds
            else:
                name = (team, dated(check, cal))
                entry = self._counters.get(name)
                if entry is None or entry[1] <= now:
                    entry = self._counters[name] = [0.0, float(counter_expiry(check, cal))]
                entry[0] += check.cost
        return Ticket(
            lease=lease, demand=demand, charged=charged_for(checks, cal), windows=team_windows(checks, after, now)
        )

    async def settle(self, ticket: Ticket, usage: Usage) -> None:
        self.settle_inline(ticket, usage)

    async def settle_many(self, settlements: Sequence[tuple[Ticket, Usage]]) -> None:
        for ticket, usage in settlements:
            self.settle_inline(ticket, usage)

    def settle_inline(self, ticket: Ticket, usage: Usage) -> bool:
        """`settle`, for callers that need not await it: nothing here waits. Always True."""
        if ticket.settled:
            return True
        ticket.settled = True
        now = self._clock()
        team = ticket.demand.team.id
        for op, name, value in corrections(ticket.charged, usage):
            if op == "zrem":
                if ticket.lease is not None:  # (a lease was charged: there is one)
                    self._leases.get((team, name), {}).pop(ticket.lease, None)
            elif op == "tat":
                self._tats[(team, name)] = shift_tat(self._tats.get((team, name)), now, value)
            else:
                entry = self._counters.get((team, name))
                if entry is not None and entry[1] > now:
                    entry[0] += value
        self.record_usage(ticket.demand, usage)
        return True

    def record_usage(self, demand: Demand, usage: Usage) -> None:
        """Add one request to its day's usage (settlement's last step; also how the guard
        keeps the usage of requests it could not settle in Redis, see `take_usage`)."""
        now = self._clock()
        team, day = demand.team.id, calendar(now).day
        record = self._usage.setdefault((team, day), {})
        self._usage_expiry[(team, day)] = now + USAGE_TTL
        prefix = f"{demand.key.id}|{demand.model}|"
        for field, value in zip(USAGE_FIELDS, usage_values(usage), strict=True):
            record[prefix + field] = record.get(prefix + field, 0) + value

    def take_usage(self) -> dict[tuple[str, str], dict[str, float]]:
        """Every usage record held, (team, day) → field → total; the limiter forgets them."""
        taken, self._usage, self._usage_expiry = self._usage, {}, {}
        return taken

    async def renew(self, tickets: Iterable[Ticket]) -> None:
        now = self._clock()
        for ticket in tickets:
            if ticket.settled or ticket.lease is None:
                continue
            team = ticket.demand.team.id
            for name, entry in ticket.charged.items():
                if entry[0] != "lease":
                    continue
                leases = self._leases.get((team, name), {})
                if leases.get(ticket.lease, 0.0) > now:
                    leases[ticket.lease] = now + self.lease_seconds

    async def usage(self, team: str, since_day: str, until_day: str) -> list[dict]:
        rows: list[dict] = []
        for day in usage_days(since_day, until_day):
            fields = self._usage.get((team, day))
            if fields:
                rows.extend(usage_rows(day, fields))
        return rows

    async def close(self) -> None:
        pass

    def _counter(self, team: str, name: str, now: float) -> float:
        entry = self._counters.get((team, name))
        return entry[0] if entry is not None and entry[1] > now else 0.0

    def _sweep(self, now: float) -> None:
        self._tats = {name: tat for name, tat in self._tats.items() if tat > now}
        for name in list(self._leases):
            live = {lease: expiry for lease, expiry in self._leases[name].items() if expiry > now}
            if live:
                self._leases[name] = live
            else:
                del self._leases[name]
        self._counters = {name: entry for name, entry in self._counters.items() if entry[1] > now}
        for name, expiry in list(self._usage_expiry.items()):
            if expiry <= now:
                del self._usage_expiry[name]
                self._usage.pop(name, None)
