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
master (`redis_connect.SlotClients`), and `renew` sends one script call per team at
once instead of one pipeline (redis-py's cluster pipelines refuse EVALSHA).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from importlib import resources
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from gateway.config import LimitsConfig, RedisStoreConfig
from gateway.limiter.base import Demand, Ticket, Usage, rejection
from gateway.limiter.memory import new_lease_id
from gateway.limiter.rules import (
    DAY_COUNTER_GRACE,
    MONTH_COUNTER_GRACE,
    USAGE_TTL,
    Calendar,
    charged_for,
    checks_for,
    corrections,
    team_windows,
    usage_days,
    usage_rows,
    usage_values,
)
from gateway.redis_connect import Client, Profile, SlotClients, connect, unreachable
from gateway.resp import lean_connection

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


def _number(value: float | int) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def profile(socket_timeout: float = SOCKET_TIMEOUT) -> Profile:
    """A pooled connection the server closed (a restart) fails its next command; one retry
    on a fresh connection hides that. Only connection errors are retried: a timeout may
    mean the script ran, and running an admission twice charges twice."""
    return Profile(retries=1, retry_timeouts=False, max_connections=MAX_CONNECTIONS, socket_timeout=socket_timeout)


class RedisLimiter:
    kind = "redis"

    def __init__(
        self, client: Client, *, prefix: str = "gw", lease_seconds: float = 60.0, socket_timeout: float = SOCKET_TIMEOUT
    ) -> None:
        """`client` (a server's, Sentinel's master's or a cluster's) becomes the limiter's
        (closed by `close()`)."""
        self._redis = client
        self._prefix = prefix
        self.lease_seconds = lease_seconds
        self._admit = client.register_script(_lua("admit"))
        self._settle = client.register_script(_lua("settle"))
        self._renew = client.register_script(_lua("renew"))
        self._slot = SlotClients(client)
        self._room = asyncio.Semaphore(MAX_CONNECTIONS)
        # Admissions and settlements (two scripts per request) on one pipelined connection
        # of the limiter's own, an eighth of redis-py's CPU per call; the rest, and a
        # cluster's scripts, through redis-py.
        self._lean = lean_connection(client, socket_timeout)

    @classmethod
    def from_config(
        cls, store: RedisStoreConfig, limits: LimitsConfig, *, socket_timeout: float = SOCKET_TIMEOUT
    ) -> RedisLimiter:
        client = connect(store, profile(socket_timeout))
        return cls(client, prefix=store.prefix, lease_seconds=limits.lease_seconds, socket_timeout=socket_timeout)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "gw", lease_seconds: float = 60.0, socket_timeout: float = SOCKET_TIMEOUT
    ) -> RedisLimiter:
        """On one server (`redis://`, `rediss://`)."""
        client = connect(RedisStoreConfig(type="redis", url=url, prefix=prefix), profile(socket_timeout))
        return cls(client, prefix=prefix, lease_seconds=lease_seconds, socket_timeout=socket_timeout)

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

    async def admit(self, demand: Demand) -> Ticket:
        # Even a request with no limits makes its round trip: under fail_closed, a
        # store that cannot be reached refuses every request (see limiter/guard.py).
        checks = checks_for(demand)
        lease = new_lease_id() if any(check.kind == "conc" for check in checks) else ""
        base = self.base(demand.team.id)
        args: list[str] = [base, lease, _number(self.lease_seconds), str(DAY_COUNTER_GRACE), str(MONTH_COUNTER_GRACE)]
        for check in checks:
            args += [check.kind, check.name, _number(check.limit), _number(check.cost), _number(check.need)]
        reply = await self._script(self._admit, base + "rpm", args)
        admitted, now, day, month, failed, wait = (_text(part) for part in reply[:6])
        now_f = float(now)
        tats = {check.name: float(_text(tat)) for check, tat in zip(checks, reply[6:], strict=True) if check.kind == "rate"}
        windows = team_windows(checks, tats, now_f)
        if admitted != "1":
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
        cal = Calendar(day=day, month=month, next_day=0, next_month=0)
        return Ticket(lease=lease or None, demand=demand, charged=charged_for(checks, cal), windows=windows)

    async def settle(self, ticket: Ticket, usage: Usage) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        demand = ticket.demand
        base = self.base(demand.team.id)
        args: list[str] = [base, f"{demand.key.id}|{demand.model}|", str(USAGE_TTL)]
        args += [_number(value) for value in usage_values(usage)]
        args.append(ticket.lease or "")
        for op, name, value in corrections(ticket.charged, usage):
            args += [op, name, _number(value)]
        await self._script(self._settle, base + "rpm", args)

    async def _script(self, script: AsyncScript, key: str, args: list[str]) -> Any:
        if self._lean is not None:
            return await self._lean.evalsha(script.sha, script.script, (key,), args)
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
