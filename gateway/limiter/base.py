"""The limiter's interface: what a request asks for (`Demand`), what admission hands back
(`Ticket`), what really happened (`Usage`), and the `Limiter` protocol both
implementations keep (`limiter/memory.py`, `limiter/redis.py`).

The wiring calls, per request:

    ticket = await limiter.admit(demand)     # raises LimitExceeded (a RateLimited) or Overloaded
    headers.update(rate_limit_headers(ticket.windows))
    ... every lease_seconds / 3, for everything in flight: await limiter.renew(tickets)
    finally: await limiter.settle(ticket, usage)   # exactly once; a second call does nothing

Limits are read from `demand.team.limits` and `demand.key.limits` at each admission, so a
change reaches the limiter as soon as the caller holds the new records (no restart).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from gateway.errors import RateLimited
from gateway.identity import ApiKey, Team
from gateway.redis.observer import Observer

# What a demand is for: a generation (`/v1/messages`: every limit but one), or a count
# (`/v1/messages/count_tokens`: `count_tokens_per_minute` alone).
MESSAGES = "messages"
COUNT_TOKENS = "count_tokens"


@dataclass(frozen=True, slots=True)
class Demand:
    """What one request asks for at admission."""

    team: Team
    key: ApiKey
    model: str  # canonical model name (for usage records)
    input_tokens: int  # estimate (input + cache tokens)
    output_tokens: int  # reservation: the request's max_tokens (or the model default)
    cost_usd: float = 0.0  # estimated cost of input + reserved output (0 when no pricing)
    # The estimated cost of the input alone: a cost budget admits a request while
    # used + this <= budget (as token budgets do with the input estimate). 0 = only
    # "used < budget" is checked.
    input_cost_usd: float = 0.0
    operation: str = MESSAGES  # or COUNT_TOKENS


@dataclass(frozen=True, slots=True)
class Window:
    """One rate dimension as the anthropic-ratelimit-* headers report it."""

    limit: int
    remaining: int
    reset_seconds: float  # until the bucket is full again


@dataclass(slots=True)
class Ticket:
    """An admitted request; `settle()` it exactly once.

    `charged` maps each bucket admission charged, by its name under the team's hash tag,
    to what it charged: `(kind, amount[, limit])` with kind one of requests, input,
    output (GCRA buckets, with the limit that converts tokens to time), tokens, cost
    (budget counters; the name carries the day or month) or lease. Opaque to callers."""

    lease: str | None  # concurrency lease id (None when no concurrency limit applies)
    demand: Demand
    charged: dict
    # Team scope: "requests", "input-tokens", "output-tokens", "tokens" (the most
    # restrictive of input/output); only the dimensions the team has a limit for.
    windows: dict[str, Window]
    settled: bool = False
    # Admitted by the per-process fallback while the shared store was unreachable.
    fallback: bool = False


@dataclass(frozen=True, slots=True)
class Usage:
    """What really happened, at settlement."""

    input_tokens: int = 0  # uncached input
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cost_usd: float = 0.0


class Limiter(Protocol):
    # Told of each round trip to Redis and of outages (`redis/observer.py`); None until the app sets it.
    observer: Observer | None

    async def admit(self, demand: Demand) -> Ticket:
        """Check every limit of the team and of the key; charge all of them, or none.
        Raises `LimitExceeded` (a `RateLimited`: 429, with retry-after and the
        anthropic-ratelimit-* headers) naming the limit and scope, or `Overloaded` (529)
        when the store is down and `on_store_error` is fail_closed."""

    async def settle(self, ticket: Ticket, usage: Usage) -> None:
        """Correct the charges to `usage`, free the lease, record usage. Idempotent."""

    async def settle_many(self, settlements: Sequence[tuple[Ticket, Usage]]) -> None:
        """`settle` each (ticket, usage), at once (one round trip for a store)."""

    def settle_inline(self, ticket: Ticket, usage: Usage) -> bool:
        """`settle` there and then, without awaiting, when this limiter can (it keeps its
        state in this process): True when it did. False when it cannot, having done
        nothing: the caller then awaits `settle_many` (batched, in the background)."""

    async def renew(self, tickets: Iterable[Ticket]) -> None:
        """Extend the leases of live requests (call every lease_seconds / 3 with
        everything in flight; batched). Settled tickets are skipped."""

    async def usage(self, team: str, since_day: str, until_day: str) -> list[dict]:
        """Per day, key and model (days `YYYY-MM-DD`, UTC, inclusive): dicts with day, key,
        model, requests, input, output, cache_read, cache_creation, cost."""

    async def close(self) -> None: ...


# ---------------------------------------------------------------- the 429


class LimitExceeded(RateLimited):
    """A request refused by a limit. `limit` is the `Limits` field, `scope` "team" or
    "key", `retry_after` seconds (None when the limit is 0: waiting will not help),
    `resets_at` Unix seconds for a budget."""

    def __init__(
        self,
        message: str,
        *,
        limit: str,
        scope: str,
        retry_after: float | None,
        resets_at: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        self.limit = limit
        self.scope = scope
        self.retry_after = retry_after
        self.resets_at = resets_at


# retry-after sent for a limit of 0 (nothing will ever pass; the client is told not to retry).
NEVER_RETRY_AFTER = 60
# A wait longer than this is not worth an automatic retry: `x-should-retry: false`.
LONGEST_RETRY = 60.0

_RATE_NAMES = {
    "requests_per_minute": "requests per minute",
    "input_tokens_per_minute": "input tokens per minute",
    "output_tokens_per_minute": "output tokens per minute",
    "count_tokens_per_minute": "count_tokens requests per minute",
}
_BUDGET_UNITS = {"tokens_per_day": "tokens", "tokens_per_month": "tokens", "cost_per_month_usd": "USD"}


def rfc3339(ts: float) -> str:
    """Unix seconds → `2025-06-01T12:00:05Z` (rounded up to the whole second)."""
    return _rfc3339_second(math.ceil(ts - 1e-6))


@functools.lru_cache(maxsize=256)
def _rfc3339_second(second: int) -> str:
    # Every admitted answer carries one reset time per window, and they fall on a few
    # distinct seconds: formatting a datetime each time cost more than the rest of the headers.
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds - 1e-6)))


def rate_limit_headers(windows: Mapping[str, Window], now: float | None = None) -> dict[str, str]:
    """`anthropic-ratelimit-<kind>-limit|remaining|reset` for every window (reset as an
    RFC 3339 UTC timestamp)."""
    at = time.time() if now is None else now
    headers: dict[str, str] = {}
    for kind, window in windows.items():
        limit, remaining, reset = _header_names(kind)
        headers[limit] = str(window.limit)
        headers[remaining] = str(window.remaining)
        headers[reset] = rfc3339(at + window.reset_seconds)
    return headers


@functools.lru_cache(maxsize=16)
def _header_names(kind: str) -> tuple[str, str, str]:
    # Four kinds, on every answer: their names are made once.
    return (
        f"anthropic-ratelimit-{kind}-limit",
        f"anthropic-ratelimit-{kind}-remaining",
        f"anthropic-ratelimit-{kind}-reset",
    )


def _whose(scope: str, team: str, key: str) -> str:
    return f"team '{team}'" if scope == "team" else f"key '{key}' in team '{team}'"


def _amount(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def rejection(
    *,
    limit: str,
    scope: str,
    value: float,
    team: str,
    key: str,
    retry_after: float | None,
    now: float,
    windows: Mapping[str, Window],
) -> LimitExceeded:
    """The 429 for a refused admission (shared by every implementation, so the texts
    and headers cannot drift). `retry_after` None = the limit is 0."""
    whose = _whose(scope, team, key)
    resets_at = None
    if retry_after is None:
        message = f"{limit} of {whose} is 0: no requests are allowed. Ask an administrator to raise it."
        wait = float(NEVER_RETRY_AFTER)
    elif limit in _BUDGET_UNITS:
        resets_at = now + retry_after
        unit = _BUDGET_UNITS[limit]
        period = "today's" if limit == "tokens_per_day" else "this month's"
        message = (
            f"Budget exhausted: {limit} of {whose} ({_amount(value)} {unit}): {period} budget has no room for this "
            f"request. It resets at {rfc3339(resets_at)}."
        )
        wait = retry_after
    elif limit == "concurrent_requests":
        message = f"Too many concurrent requests: concurrent_requests of {whose} is {_amount(value)}."
        wait = retry_after
    else:
        message = (
            f"Rate limit exceeded: {limit} of {whose} ({_amount(value)} {_RATE_NAMES.get(limit, '')})."
            f" Retry after {retry_after_header(retry_after)} seconds."
        )
        wait = retry_after
    headers = rate_limit_headers(windows, now)
    headers["retry-after"] = retry_after_header(wait)
    if retry_after is None or wait > LONGEST_RETRY:
        headers["x-should-retry"] = "false"
    return LimitExceeded(
        message, limit=limit, scope=scope, retry_after=retry_after, resets_at=resets_at, headers=headers
    )


__all__ = [
    "COUNT_TOKENS",
    "MESSAGES",
    "Demand",
    "LimitExceeded",
    "Limiter",
    "Ticket",
    "Usage",
    "Window",
    "rate_limit_headers",
    "rejection",
    "rfc3339",
]
