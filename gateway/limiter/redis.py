"""The limiter shared by every gateway process: one Lua script per admission, one per
settlement, each touching the keys of one team only.

Layout (`p` is the store's prefix; every name of a team under the hash tag `{p:t:<team>}`,
so one team's script touches one Redis Cluster slot):

    {p:t:<team>}:rpm | :itpm | :otpm            GCRA tat (Unix seconds, a float string);
                                                expires when the bucket is full again (+1 s)
    {p:t:<team>}:conc                           sorted set: lease id → expiry (Unix seconds)
    {p:t:<team>}:tpd:<YYYY-MM-DD>               tokens counted against the day's budget
    {p:t:<team>}:tpmo:<YYYY-MM>                 tokens counted against the month's budget
    {p:t:<team>}:cpmo:<YYYY-MM>                 USD counted against the month's budget
    {p:t:<team>}:k:<key id>:<any of the above>  the same for a key's own limits in the team
    {p:t:<team>}:usage:<YYYY-MM-DD>             hash: `<key id>|<model>|<field>` → total,
                                                fields requests, input, output, cache_read,
                                                cache_creation, cost; kept ~400 days

Budget counters are written only for budgets that are set, and outlive their period by
a few days so late settlements still correct them. Time is Redis's (`TIME` inside the
scripts), never this process's clock.

On Redis Cluster each team's scripts run on the master owning its slot (the cluster
client routes them by KEYS[1]); `add_usage`'s transaction runs on a plain client to that
master (`redis.clients.SlotClients`), and `renew` sends one script call per team at
once instead of one pipeline (redis-py's cluster pipelines refuse EVALSHA).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

from pydantic import SecretStr
from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from gateway.config import LimitsConfig, RedisStoreConfig
from gateway.identity import DEFAULT_COUNT_TOKENS_PER_MINUTE, Limits
from gateway.limiter.base import COUNT_TOKENS, Demand, Ticket, Usage, rejection
from gateway.limiter.memory import new_lease_id
from gateway.limiter.rules import (
    CORRECTION_OPS,
    DAY_COUNTER_GRACE,
    MONTH_COUNTER_GRACE,
    USAGE_TTL,
    Calendar,
    Check,
    amounts,
    charged_for,
    checks_for,
    correction,
    team_windows,
    usage_days,
    usage_rows,
    usage_values,
)
from gateway.redis.clients import Client, Profile, SlotClients, connect, unreachable
from gateway.redis.pipelined import encode_args, lean_connection

# Seconds to wait for Redis before calling it unreachable (a hung server must not hang
# admissions; the policy in `limiter/guard.py` then decides).
SOCKET_TIMEOUT = 2.0
# Connections to Redis per process (per node on a cluster). More admissions at once wait
# for one (each holds it for one short script) rather than fail, as redis-py's pools do
# when they are full: the limiter lets at most this many calls use Redis at a time.
MAX_CONNECTIONS = 64
POOL_WAIT = 5.0


def _lua(name: str) -> str:
    folder = resources.files("gateway.limiter") / "lua"
    return (folder / "calendar.lua").read_text() + (folder / f"{name}.lua").read_text()


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _settle_own(ticket: Ticket, usage: Usage) -> list[str | int | float]:
    """The settlement script's arguments of this request alone (see settle.lua)."""
    demand = ticket.demand
    own: list[str | int | float] = [f"{demand.key.id}|{demand.model}|", ticket.lease or "", *usage_values(usage)]
    own += [correction(entry, usage) for entry in ticket.charged.values() if entry[0] in CORRECTION_OPS]
    return own


@functools.lru_cache(maxsize=4)
def _labels(day: bytes | str, month: bytes | str) -> Calendar:
    """The day and month an admission's script names (budget counters' names carry them);
    they change once a day."""
    return Calendar(day=_text(day), month=_text(month), next_day=0, next_month=0)


def _source(script: AsyncScript) -> str:
    # redis-py types a script's text loosely; ours are registered as str (`_lua`).
    return cast(str, script.script)


def _number(value: float | int | str) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def profile(socket_timeout: float = SOCKET_TIMEOUT) -> Profile:
    """A pooled connection the server closed (a restart) fails its next command; one retry
    on a fresh connection hides that. Only connection errors are retried: a timeout may
    mean the script ran, and running an admission twice charges twice."""
    return Profile(retries=1, retry_timeouts=False, max_connections=MAX_CONNECTIONS, socket_timeout=socket_timeout)


@dataclass(frozen=True, slots=True)
class _Shape:
    """What every admission of one key in one team shares while their limits stay the
    same, made once: the checks (with no amounts: each request's are `amounts`) and the
    admission script's arguments that do not change, also encoded for the lean connection."""

    team_limits: Limits
    key_limits: Limits
    checks: list[Check]
    leased: bool  # a concurrency limit applies: each admission takes a lease
    rates: list[tuple[int, str]]  # (position, name) of each rate check: its tat is in the reply
    key: str  # KEYS[1]
    args: list[str]
    packed: bytes  # numkeys, the key and `args`, in RESP


class RedisLimiter:
    kind = "redis"

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "gw",
        lease_seconds: float = 60.0,
        socket_timeout: float = SOCKET_TIMEOUT,
        count_tokens_per_minute: int | None = DEFAULT_COUNT_TOKENS_PER_MINUTE,
    ) -> None:
        """`client` (a server's, Sentinel's master's or a cluster's) becomes the limiter's
        (closed by `close()`). `count_tokens_per_minute`: a team's when its limits set none."""
        self._redis = client
        self._prefix = prefix
        self.lease_seconds = lease_seconds
        self.count_tokens_per_minute = count_tokens_per_minute
        self._admit = client.register_script(_lua("admit"))
        self._settle = client.register_script(_lua("settle"))
        self._renew = client.register_script(_lua("renew"))
        self._slot = SlotClients(client)
        self._room = asyncio.Semaphore(MAX_CONNECTIONS)
        # Admissions and settlements (two scripts per request) on one pipelined connection
        # of the limiter's own, an eighth of redis-py's CPU per call; the rest, and a
        # cluster's scripts, through redis-py.
        self._lean = lean_connection(client, socket_timeout)
        self._shapes: dict[tuple[str, str, str], _Shape] = {}  # (team id, key id, operation) →
        self._settle_heads: dict[tuple[str, ...], tuple[str, list[str], bytes]] = {}  # (team id, *charged) →

    @classmethod
    def from_config(
        cls, store: RedisStoreConfig, limits: LimitsConfig, *, socket_timeout: float = SOCKET_TIMEOUT
    ) -> RedisLimiter:
        client = connect(store, profile(socket_timeout))
        return cls(
            client,
            prefix=store.prefix,
            lease_seconds=limits.lease_seconds,
            socket_timeout=socket_timeout,
            count_tokens_per_minute=limits.default_count_tokens_per_minute,
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "gw",
        lease_seconds: float = 60.0,
        socket_timeout: float = SOCKET_TIMEOUT,
        count_tokens_per_minute: int | None = DEFAULT_COUNT_TOKENS_PER_MINUTE,
    ) -> RedisLimiter:
        """On one server (`redis://`, `rediss://`)."""
        client = connect(RedisStoreConfig(type="redis", url=SecretStr(url), prefix=prefix), profile(socket_timeout))
        return cls(
            client,
            prefix=prefix,
            lease_seconds=lease_seconds,
            socket_timeout=socket_timeout,
            count_tokens_per_minute=count_tokens_per_minute,
        )

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """At most MAX_CONNECTIONS calls use Redis at once; the others wait up to POOL_WAIT.
        A cluster that cannot be reached at all raises `RedisClusterException`, which is
        no `RedisError`: it becomes a connection error, as the guard expects an outage."""
        if self._room.locked():  # (no timer on the usual path: a free turn is taken at once)
            try:
                async with asyncio.timeout(POOL_WAIT):
                    await self._room.acquire()
            except TimeoutError:
                raise RedisConnectionError(f"no free connection to Redis within {POOL_WAIT:g}s") from None
        else:
            await self._room.acquire()
        try:
            yield
        except Exception as exc:
            if unreachable(exc) and not isinstance(exc, RedisError | OSError):
                raise RedisConnectionError(f"Redis cannot be reached ({type(exc).__name__})") from exc
            raise
        finally:
            self._room.release()

    def base(self, team: str) -> str:
        """The start of every name of a team: its hash tag and ':'."""
        return "{" + f"{self._prefix}:t:{team}" + "}:"

    def _shape(self, demand: Demand) -> _Shape:
        team, key = demand.team, demand.key
        shape = self._shapes.get((team.id, key.id, demand.operation))
        if (
            shape is not None
            and (shape.team_limits is team.limits or shape.team_limits == team.limits)
            and (shape.key_limits is key.limits or shape.key_limits == key.limits)
        ):
            return shape
        if len(self._shapes) > 10_000:  # teams and keys come and go: forget them all now and then
            self._shapes.clear()
        checks = checks_for(
            Demand(team=team, key=key, model="", input_tokens=0, output_tokens=0, operation=demand.operation),
            self.count_tokens_per_minute,
        )
        base = self.base(team.id)
        args: list[str] = [base, _number(self.lease_seconds), str(DAY_COUNTER_GRACE), str(MONTH_COUNTER_GRACE)]
        args.append(str(len(checks)))
        for check in checks:
            args += [check.kind, check.name, _number(check.limit)]
        shape = self._shapes[(team.id, key.id, demand.operation)] = _Shape(
            team_limits=team.limits,
            key_limits=key.limits,
            checks=checks,
            leased=any(check.kind == "conc" for check in checks),
            rates=[(i, check.name) for i, check in enumerate(checks) if check.kind == "rate"],
            key=base + "rpm",
            args=args,
            packed=encode_args([1, base + "rpm", *args]),
        )
        return shape

    async def admit(self, demand: Demand) -> Ticket:
        # Even a request with no limits makes its round trip: under fail_closed, a
        # store that cannot be reached refuses every request (see limiter/guard.py). A
        # count_tokens request with none has nothing to check and nothing to record.
        shape = self._shape(demand)
        checks = shape.checks
        if not checks and demand.operation == COUNT_TOKENS:
            return Ticket(lease=None, demand=demand, charged={}, windows={})
        lease = new_lease_id() if shape.leased else ""
        costs = []
        own: list[str | int | float] = [lease]  # this request's arguments (encoded as _number does)
        for check in checks:
            cost, need = amounts(check.kind, check.settles, check.limit, demand)
            costs.append(cost)
            own += (cost, need)
        if self._lean is not None:
            packed = shape.packed + encode_args(own)
            count = 2 + len(shape.args) + len(own)
            reply: Any = await self._lean.evalsha_packed(self._admit.sha, _source(self._admit), count, packed)
        else:
            async with self._turn():
                reply = await self._admit(keys=[shape.key], args=shape.args + [_number(v) for v in own])
        admitted, now, day, month, failed, wait = reply[:6]  # int() and float() take bytes as they take str
        now_f = float(now)
        tats = {name: float(reply[6 + i]) for i, name in shape.rates}
        windows = team_windows(checks, tats, now_f)
        if int(admitted) != 1:
            check = checks[int(failed) - 1]
            retry = float(wait)
            raise rejection(
                limit=check.field,
                scope=check.scope,
                value=check.limit,
                team=demand.team.id,
                key=demand.key.id,
                retry_after=None if retry < 0 else retry,
                now=now_f,
                windows=windows,
            )
        cal = _labels(day, month)
        return Ticket(lease=lease or None, demand=demand, charged=charged_for(checks, cal, costs), windows=windows)

    async def settle(self, ticket: Ticket, usage: Usage) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        key, args, _ = self._settle_static(ticket)
        await self._script(self._settle, key, args + [_number(arg) for arg in _settle_own(ticket, usage)])

    def settle_inline(self, ticket: Ticket, usage: Usage) -> bool:
        return False  # every settlement is a round trip to Redis

    async def settle_many(self, settlements: Sequence[tuple[Ticket, Usage]]) -> None:
        """`settle_each`, raising the first failure once every settlement was sent (the
        guard, which handles each failure on its own, calls `settle_each` itself)."""
        for error in await self.settle_each(settlements):
            if error is not None:
                raise error

    async def settle_each(self, settlements: Sequence[tuple[Ticket, Usage]]) -> list[BaseException | None]:
        """`settle` each (ticket, usage), on the lean connection in one write: what each
        raised, or None, in order (the guard handles each failure on its own). A ticket
        already settled (or twice in the list) is skipped."""
        if self._lean is None:
            return await asyncio.gather(*(self.settle(*pair) for pair in settlements), return_exceptions=True)
        calls: list[tuple[int, bytes]] = []
        sent: list[int] = []
        for i, (ticket, usage) in enumerate(settlements):
            if ticket.settled:
                continue
            ticket.settled = True
            _, args, packed = self._settle_static(ticket)
            own = _settle_own(ticket, usage)
            calls.append((2 + len(args) + len(own), packed + encode_args(own)))
            sent.append(i)
        errors: list[BaseException | None] = [None] * len(settlements)
        if not calls:
            return errors
        try:
            replies = await self._lean.evalsha_many(self._settle.sha, _source(self._settle), calls)
        except (RedisError, OSError) as exc:  # could not connect: none of them left
            replies = [exc] * len(calls)
        for i, reply in zip(sent, replies, strict=True):
            if isinstance(reply, BaseException):
                errors[i] = reply
        return errors

    def _settle_static(self, ticket: Ticket) -> tuple[str, list[str], bytes]:
        """The settlement script's key and the arguments every settlement of one team's
        tickets charging the same buckets shares (the same limits, on one day): made once.
        Also numkeys, the key and those arguments in RESP, for the lean connection."""
        team, charged = ticket.demand.team.id, ticket.charged
        found = self._settle_heads.get((team, *charged))
        if found is None:
            if len(self._settle_heads) > 10_000:  # (the day's names change daily)
                self._settle_heads.clear()
            base = self.base(team)
            corrected = [
                (CORRECTION_OPS[entry[0]], name) for name, entry in charged.items() if entry[0] in CORRECTION_OPS
            ]
            args = [base, str(USAGE_TTL), str(len(corrected))]
            for op, name in corrected:
                args += (op, name)
            found = self._settle_heads[(team, *charged)] = (base + "rpm", args, encode_args([1, base + "rpm", *args]))
        return found

    async def _script(self, script: AsyncScript, key: str, args: list[str]) -> Any:
        if self._lean is not None:
            return await self._lean.evalsha(script.sha, _source(script), (key,), args)
        async with self._turn():
            return await script(keys=[key], args=args)

    async def renew(self, tickets: Iterable[Ticket]) -> None:
        """One pipeline: one script call per team (each in its team's slot); on a
        cluster, the calls at once."""
        by_team: dict[str, list[str]] = defaultdict(list)
        for ticket in tickets:
            if ticket.settled or ticket.lease is None or ticket.fallback:
                continue
            for name, entry in ticket.charged.items():
                if entry[0] == "lease":
                    by_team[ticket.demand.team.id] += [name, ticket.lease]
        if not by_team:
            return
        if isinstance(self._redis, RedisCluster):
            await asyncio.gather(*(self._renew_team(team, pairs) for team, pairs in by_team.items()))
            return
        async with self._turn():
            await self._renew_pipelined(by_team)

    async def _renew_pipelined(self, by_team: dict[str, list[str]]) -> None:
        for attempt in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for team, pairs in by_team.items():
                    base = self.base(team)
                    pipe.evalsha(self._renew.sha, 1, base + "rpm", base, _number(self.lease_seconds), *pairs)
                replies = await pipe.execute(raise_on_error=False)
            if not any(isinstance(reply, NoScriptError) for reply in replies) or attempt:
                break
            self._renew.sha = await self._redis.script_load(self._renew.script)  # a restarted server
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply

    async def _renew_team(self, team: str, pairs: list[str]) -> None:
        # Each call takes its own turn, as admissions do: however many teams there are,
        # no master gets more than MAX_CONNECTIONS connections from this process. The
        # script reloads itself after a restart (NOSCRIPT).
        base = self.base(team)
        async with self._turn():
            await self._renew(keys=[base + "rpm"], args=[base, _number(self.lease_seconds), *pairs])

    async def usage(self, team: str, since_day: str, until_day: str) -> list[dict]:
        days = usage_days(since_day, until_day)
        base = self.base(team)
        async with self._turn(), self._redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(base + "usage:" + day)
            found = await pipe.execute()
        rows: list[dict] = []
        for day, fields in zip(days, found, strict=True):
            if fields:
                rows.extend(usage_rows(day, {_text(name): _text(value) for name, value in fields.items()}))
        return rows

    async def add_usage(self, team: str, days: dict[str, dict[str, float]]) -> None:
        """Add usage counted elsewhere (day → `<key>|<model>|<field>` → total) to a team's
        usage hashes, in one transaction: the records land whole or not at all."""

        async def add(client: Redis) -> None:
            async with client.pipeline(transaction=True) as pipe:
                for day, fields in days.items():
                    name = self.base(team) + "usage:" + day
                    for field, value in fields.items():
                        if field.endswith("|cost"):
                            pipe.hincrbyfloat(name, field, float(value))
                        else:
                            pipe.hincrby(name, field, int(value))
                    pipe.expire(name, USAGE_TTL)
                await pipe.execute()

        async with self._turn():
            await self._slot.run(self.base(team) + "rpm", add)

    async def close(self) -> None:
        if self._lean is not None:
            await self._lean.close()
        await self._slot.aclose()
        await self._redis.aclose()
        if isinstance(self._redis, Redis):  # also a pool it was handed rather than made
            await self._redis.connection_pool.disconnect()
