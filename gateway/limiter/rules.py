"""The limiter's arithmetic, in pure Python: GCRA buckets, UTC calendar labels, the list
of checks a demand makes, and what settlement corrects. `limiter/memory.py` runs it
directly; `limiter/lua/*.lua` is the same arithmetic inside Redis (the tests hold the two
to the same answers). Nothing here reads a clock: `now` is always passed in.

GCRA. A bucket of capacity L (the per-minute limit) refilling L/60 per second is one
number, the theoretical arrival time `tat`: the moment the bucket would be full again.
Each unit costs 60/L seconds. A cost c is admitted at `now` while
    max(tat, now) + c * 60 / L - 60 <= now
i.e. while the bucket, after taking c, is not more than a minute "ahead". A cost above L
is capped at L (one large request passes a full bucket); settlement then charges the
rest, which pushes `tat` more than a minute ahead: the bucket is in debt and later
requests wait until it is paid off.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest
from gateway.identity import Limits
from gateway.limiter.base import COUNT_TOKENS, Demand, Usage, Window

PERIOD = 60.0  # seconds: a per-minute bucket's capacity, in time
EPSILON = 1e-6  # float slack on time comparisons (Redis TIME has microseconds)
# Tats are Unix seconds (~1.7e9), where one float addition may be off by ~1e-7 s; a
# bucket saturated at one instant adds up such errors. A ten-thousandth of a unit's
# time absorbs them without ever letting a unit more through.
UNIT_SLACK = 1e-4
DAY = 86400

# Rate buckets: (suffix, Limits field, header kind, what settles them).
RATES = (
    ("rpm", "requests_per_minute", "requests", "requests"),
    ("itpm", "input_tokens_per_minute", "input-tokens", "input"),
    ("otpm", "output_tokens_per_minute", "output-tokens", "output"),
)
# The bucket of count_tokens requests, as a rate above: their own, so a count never spends
# a messages request (nor the reverse); a count_tokens answer reports it as `requests`.
COUNT_RATE = ("ctpm", "count_tokens_per_minute", "requests", "requests")
# Budgets: (suffix, Limits field, calendar period, what settles them).
BUDGETS = (
    ("tpd", "tokens_per_day", "day", "tokens"),
    ("tpmo", "tokens_per_month", "month", "tokens"),
    ("cpmo", "cost_per_month_usd", "month", "cost"),
)
# Budget counters outlive their period by this much, so a late settlement still corrects them.
DAY_COUNTER_GRACE = 2 * DAY
MONTH_COUNTER_GRACE = 7 * DAY
USAGE_TTL = 400 * DAY
USAGE_FIELDS = ("requests", "input", "output", "cache_read", "cache_creation", "cost")


# ---------------------------------------------------------------- GCRA


def interval(limit: float) -> float:
    """Seconds one unit costs in a bucket of `limit` per minute."""
    return PERIOD / limit


def slack(limit: float) -> float:
    """Seconds of float error forgiven when admitting into a bucket of `limit`."""
    return max(EPSILON, UNIT_SLACK * interval(limit))


def gcra_admit(tat: float | None, now: float, limit: float, cost: float) -> tuple[bool, float, float]:
    """(admitted, tat after (or as it is, when refused), seconds until this cost would pass).
    `limit` > 0; `cost` already capped at `limit`."""
    base = now if tat is None or tat < now else tat
    new = base + cost * interval(limit)
    allow_at = new - PERIOD
    if allow_at > now + slack(limit):
        return False, base, allow_at - now
    return True, new, 0.0


def gcra_correct(tat: float | None, now: float, limit: float, delta: float) -> float:
    """The tat after settlement adds `delta` units (negative: a refund) to a bucket."""
    return shift_tat(tat, now, delta * interval(limit))


def shift_tat(tat: float | None, now: float, seconds: float) -> float:
    """Move a tat by `seconds`. A charge lands on a bucket that may have refilled
    meanwhile (from `now` at the earliest); a refund cannot take it past full."""
    base = now if tat is None or tat < now else tat
    moved = base + seconds
    return moved if moved > now else now


def window(limit: float, tat: float | None, now: float) -> Window:
    """A bucket as the headers report it: limit, whole units left, seconds until full."""
    if limit <= 0:
        return Window(limit=0, remaining=0, reset_seconds=0.0)
    ahead = max(0.0, (tat or now) - now)
    remaining = math.floor((PERIOD - ahead) / interval(limit) + 1e-3)
    return Window(limit=int(limit), remaining=max(0, min(int(limit), remaining)), reset_seconds=ahead)


def tightest(a: Window | None, b: Window | None) -> Window | None:
    """The more restrictive of two windows (fewer remaining; then the later reset)."""
    if a is None or b is None:
        return a or b
    if a.remaining != b.remaining:
        return a if a.remaining < b.remaining else b
    return a if a.reset_seconds >= b.reset_seconds else b


# ---------------------------------------------------------------- calendar (UTC)
# Howard Hinnant's civil-from-days algorithms: the same integer arithmetic runs in Lua,
# which has no os.date inside Redis.


def civil_from_days(days: int) -> tuple[int, int, int]:
    """Days since 1970-01-01 → (year, month, day)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y), m, d


def days_from_civil(y: int, m: int, d: int) -> int:
    y = y - 1 if m <= 2 else y
    era = y // 400
    yoe = y - era * 400
    mp = m - 3 if m > 2 else m + 9
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@dataclass(frozen=True, slots=True)
class Calendar:
    """The UTC day and month containing an instant, and when each ends."""

    day: str  # YYYY-MM-DD
    month: str  # YYYY-MM
    next_day: int  # Unix seconds of the next midnight
    next_month: int  # Unix seconds of the first of next month


def calendar(now: float) -> Calendar:
    return _calendar_of_day(math.floor(now / DAY))


@functools.lru_cache(maxsize=4)
def _calendar_of_day(days: int) -> Calendar:
    # Asked on every admission and settlement; the answer changes once a day.
    y, m, d = civil_from_days(days)
    ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
    return Calendar(
        day=f"{y:04d}-{m:02d}-{d:02d}",
        month=f"{y:04d}-{m:02d}",
        next_day=(days + 1) * DAY,
        next_month=days_from_civil(ny, nm, 1) * DAY,
    )


def days_between(since_day: str, until_day: str) -> list[str]:
    """Every `YYYY-MM-DD` label from `since_day` to `until_day`, inclusive."""
    first, last = _parse_day(since_day), _parse_day(until_day)
    labels = []
    for days in range(first, last + 1):
        y, m, d = civil_from_days(days)
        labels.append(f"{y:04d}-{m:02d}-{d:02d}")
    return labels


def _parse_day(label: str) -> int:
    try:
        y, m, d = (int(part) for part in label.split("-"))
    except ValueError:
        raise ValueError(f"not a day (YYYY-MM-DD): {label!r}") from None
    days = days_from_civil(y, m, d)
    if len(label) != 10 or civil_from_days(days) != (y, m, d):
        raise ValueError(f"not a day (YYYY-MM-DD): {label!r}")
    return days


# ---------------------------------------------------------------- checks


@dataclass(frozen=True, slots=True)
class Check:
    """One limit a demand must pass. `name` is the bucket's name under the team's hash
    tag (a budget's gets `:<day>` or `:<month>` appended at admission)."""

    kind: str  # "rate" | "conc" | "day" | "month"
    name: str
    limit: float
    cost: float  # what admission adds (capped for a rate)
    need: float  # a budget: what must still fit (the input estimate or its cost)
    field: str  # the Limits field, for the message
    scope: str  # "team" | "key"
    settles: str  # requests | input | output | tokens | cost | lease


def amounts(kind: str, settles: str, limit: float, demand: Demand) -> tuple[float, float]:
    """A check's (cost, need) for `demand` (see `Check`): the only parts of a check that
    differ from one request to the next."""
    if kind == "rate":
        wanted = 1 if settles == "requests" else demand.input_tokens if settles == "input" else demand.output_tokens
        return min(max(wanted, 0), limit), 0
    if kind == "conc":
        return 1, 0
    if settles == "tokens":
        need = max(demand.input_tokens, 0)
        return need + max(demand.output_tokens, 0), need
    return max(demand.cost_usd, 0.0), max(demand.input_cost_usd, 0.0)


def _scope_checks(limits: Limits, scope: str, prefix: str, demand: Demand) -> list[Check]:
    checks = []
    for suffix, field, _, settles in RATES:
        limit = getattr(limits, field)
        if limit is None:
            continue
        cost, need = amounts("rate", settles, limit, demand)
        checks.append(Check("rate", prefix + suffix, limit, cost, need, field, scope, settles))
    if limits.concurrent_requests is not None:
        checks.append(
            Check("conc", prefix + "conc", limits.concurrent_requests, 1, 0, "concurrent_requests", scope, "lease")
        )
    for suffix, field, period, settles in BUDGETS:
        limit = getattr(limits, field)
        if limit is None:
            continue
        cost, need = amounts(period, settles, limit, demand)
        checks.append(Check(period, prefix + suffix, limit, cost, need, field, scope, settles))
    return checks


def _count_checks(limit: int | None, scope: str, prefix: str, demand: Demand) -> list[Check]:
    if limit is None:
        return []
    suffix, field, _, settles = COUNT_RATE
    cost, need = amounts("rate", settles, limit, demand)
    return [Check("rate", prefix + suffix, limit, cost, need, field, scope, settles)]


def checks_for(demand: Demand, count_tokens_default: int | None = None) -> list[Check]:
    """Every limit of the team, then every limit of the key (scoped within the team), that
    the demand's operation counts against: a count_tokens request, its bucket alone
    (`count_tokens_default` for a team that sets none); a messages request, all the others."""
    key_prefix = f"k:{demand.key.id}:"
    if demand.operation == COUNT_TOKENS:
        team_limit = demand.team.limits.count_tokens_per_minute
        if team_limit is None:
            team_limit = count_tokens_default
        return _count_checks(team_limit, "team", "", demand) + _count_checks(
            demand.key.limits.count_tokens_per_minute, "key", key_prefix, demand
        )
    return _scope_checks(demand.team.limits, "team", "", demand) + _scope_checks(
        demand.key.limits, "key", key_prefix, demand
    )


def dated(check: Check, cal: Calendar) -> str:
    """A bucket's stored name: a budget counter carries its day or month."""
    if check.kind == "day":
        return f"{check.name}:{cal.day}"
    if check.kind == "month":
        return f"{check.name}:{cal.month}"
    return check.name


def budget_reset(check: Check, cal: Calendar) -> int:
    return cal.next_day if check.kind == "day" else cal.next_month


def counter_expiry(check: Check, cal: Calendar) -> int:
    """Unix seconds at which a budget counter may go."""
    if check.kind == "day":
        return cal.next_day + DAY_COUNTER_GRACE
    return cal.next_month + MONTH_COUNTER_GRACE


# What admission charged a bucket (`Ticket.charged`): (settles, amount[, limit]), or
# ("lease",) for a concurrency lease. Its length goes with `settles`, which no tuple
# type can say: the figures are read into typed names where they are used.
Charge = tuple[Any, ...]
# One row of `usage_rows`: day, key and model, then each of USAGE_FIELDS.
UsageRow = dict[str, str | float | int]


def charged_for(checks: list[Check], cal: Calendar, costs: Sequence[float] | None = None) -> dict[str, Charge]:
    """`Ticket.charged`: bucket name → (settles, amount[, limit]). `costs`: each check's,
    when the checks do not carry the request's (`amounts`)."""
    charged: dict[str, Charge] = {}
    for i, check in enumerate(checks):
        cost = check.cost if costs is None else costs[i]
        if check.kind == "rate":
            charged[check.name] = (check.settles, cost, check.limit)
        elif check.kind == "conc":
            charged[check.name] = ("lease",)
        else:
            charged[dated(check, cal)] = (check.settles, cost)
    return charged


_HEADER_KINDS = {field: kind for _, field, kind, _ in (*RATES, COUNT_RATE)}


def team_windows(checks: list[Check], tats: Mapping[str, float | None], now: float) -> dict[str, Window]:
    """The team's windows from its buckets' tats (after the charge when admitted)."""
    windows: dict[str, Window] = {}
    # The team's rate checks come first, in RATES order (`_scope_checks`): the headers' order.
    for check in checks:
        if check.kind == "rate" and check.scope == "team":
            windows[_HEADER_KINDS[check.field]] = window(check.limit, tats.get(check.name), now)
    tokens = tightest(windows.get("input-tokens"), windows.get("output-tokens"))
    if tokens is not None:
        windows["tokens"] = tokens
    return windows


def pick_failure(failures: list[tuple[int, float | None]]) -> tuple[int, float | None]:
    """Of (check index, retry after or None for never), the one that waits longest."""
    return max(failures, key=lambda f: (math.inf if f[1] is None else f[1], -f[0]))


# ---------------------------------------------------------------- settlement


def actual_input(usage: Usage) -> int:
    """Input tokens as the input-tokens bucket counts them: the estimate at admission is
    the whole prompt (uncached + cache reads + cache writes), so settlement counts the same."""
    return usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens


def actual_total(usage: Usage) -> int:
    return actual_input(usage) + usage.output_tokens


def corrections(charged: Mapping[str, Charge], usage: Usage) -> list[tuple[str, str, float]]:
    """Settlement's operations, from what admission charged and what happened:
    ("tat", bucket, seconds to move its tat), ("zrem", conc set, -), ("add", budget
    counter, delta). Nothing for a bucket already exact."""
    ops: list[tuple[str, str, float]] = []
    for name, entry in charged.items():
        op = CORRECTION_OPS.get(entry[0])
        if op is None:
            continue
        value = correction(entry, usage)
        if value or op == "zrem":
            ops.append((op, name, value))
    return ops


# What settlement does to a bucket, by what it settles (`Ticket.charged`).
CORRECTION_OPS = {"lease": "zrem", "input": "tat", "output": "tat", "tokens": "add", "cost": "add"}


def correction(entry: Charge, usage: Usage) -> float:
    """The value of a charged bucket's correction (`corrections`): seconds to move a
    tat, or a budget counter's delta; 0 for a lease, or for a bucket already exact."""
    settles = entry[0]
    if settles in ("input", "output"):
        actual = actual_input(usage) if settles == "input" else usage.output_tokens
        delta: float = actual - entry[1]
        return delta * interval(entry[2]) if delta else 0
    if settles == "tokens":
        charged: float = entry[1]
        return actual_total(usage) - charged
    if settles == "cost":
        cost: float = entry[1]
        return usage.cost_usd - cost
    return 0


def usage_values(usage: Usage) -> tuple[int, int, int, int, int, float]:
    """One request's increments, in USAGE_FIELDS order."""
    return (
        1,
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_input_tokens,
        usage.cache_creation_input_tokens,
        usage.cost_usd,
    )


def usage_rows(day: str, fields: Mapping[str, str | float | int]) -> list[UsageRow]:
    """A day's usage hash (`<key>|<model>|<field>` → value) → rows, sorted by key and model."""
    rows: dict[tuple[str, str], UsageRow] = {}
    for name, value in fields.items():
        key, _, rest = name.partition("|")
        model, _, field = rest.rpartition("|")
        if field not in USAGE_FIELDS:
            continue
        row = rows.setdefault((key, model), {"day": day, "key": key, "model": model, **dict.fromkeys(USAGE_FIELDS, 0)})
        number = float(value)
        row[field] = number if field == "cost" else int(round(number))
    for row in rows.values():
        row["cost"] = float(row["cost"])
    return [rows[pair] for pair in sorted(rows)]


# The limits a messages request counts against (all but count_tokens_per_minute).
LIMIT_FIELDS = tuple(field for field in Limits.model_fields if field != COUNT_RATE[1])
# The limits a request's input-token estimate counts against (the others need none).
ESTIMATED_FIELDS = ("input_tokens_per_minute", "tokens_per_day", "tokens_per_month", "cost_per_month_usd")


def needs_input_estimate(team: Limits, key: Limits) -> bool:
    return any(getattr(team, f) is not None or getattr(key, f) is not None for f in ESTIMATED_FIELDS)


def has_limits(demand: Demand, count_tokens_default: int | None = None) -> bool:
    """Whether any limit applies to the demand (`checks_for` would make a check)."""
    team, key = demand.team.limits, demand.key.limits
    if demand.operation == COUNT_TOKENS:
        return (
            team.count_tokens_per_minute is not None
            or count_tokens_default is not None
            or key.count_tokens_per_minute is not None
        )
    return any(getattr(team, f) is not None or getattr(key, f) is not None for f in LIMIT_FIELDS)


# The longest range `usage()` reads at once (the records themselves live ~400 days).
MAX_USAGE_DAYS = 400


def usage_days(since_day: str, until_day: str) -> list[str]:
    """The day labels of a usage query; `InvalidRequest` for a bad or too long range."""
    try:
        first, last = _parse_day(since_day), _parse_day(until_day)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    if last < first:
        raise InvalidRequest(f"the range ends ({until_day}) before it starts ({since_day})")
    if last - first + 1 > MAX_USAGE_DAYS:
        raise InvalidRequest(f"a usage query spans at most {MAX_USAGE_DAYS} days (asked for {last - first + 1})")
    return days_between(since_day, until_day)


def divided(limits: Limits, share: int) -> Limits:
    """A per-process share of `limits` (the fallback while the store is down): each limit
    divided by `share`, never below 1 unless it was 0."""
    if share <= 1:
        return limits
    changes: dict[str, float | int] = {}
    for field, value in limits.model_dump().items():
        if value is None or value == 0:
            continue
        changes[field] = value / share if isinstance(value, float) else max(1, value // share)
    return limits.model_copy(update=changes)
