"""The production store: teams and keys in Redis, shared by every gateway process.

Layout (every name under one hash tag, `{<prefix>}`, so all of it lives in one Redis
Cluster slot and a transaction or script may touch any of it):

    {p}:team:<id>          a Team as JSON
    {p}:teams              set of team ids
    {p}:key:<id>           an ApiKey as JSON (without last_used_at)
    {p}:keys               sorted set of key ids, scored by created_at
    {p}:team-keys:<team>   set of the ids of the keys whose `teams` name the team
    {p}:keyhash:<sha256>   → key id; a rotated-out hash carries a TTL (its grace)
    {p}:key-used           hash: key id → last-used Unix seconds

Changes publish on the channel `<prefix>:invalidate`, inside the same MULTI/EXEC as the
writes, so a subscriber never hears of a change before it can read it, and a change is
never committed without its message.

Writes are optimistic transactions (WATCH, read, MULTI/EXEC; retried if a watched key
changed): the checks and the new record are computed in Python with the same rules as
the memory store (`store/base.py`), and a crash can never leave half a key behind.

On Redis Cluster the one hash tag puts everything on one master. Single commands and
scripts go through the cluster client (it follows the slot); transactions and pipelines
run on a plain client to that master (`redis.clients.SlotClients`: redis-py's cluster
pipelines refuse PUBLISH and MGET), and the change feed subscribes there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

import orjson
from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline, PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError

from gateway.config import RedisStoreConfig
from gateway.errors import Conflict, GatewayError, InvalidRequest, NotFound, StoreUnavailable
from gateway.identity import ApiKey, Limits, Team
from gateway.redis.clients import Client, Profile, SlotClients, connect, feed_client, unreachable
from gateway.redis.observer import Observer
from gateway.store.base import (
    ALL,
    FoundKey,
    changed_key,
    changed_team,
    check_default_team,
    merge_put_key,
    missing_teams_error,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Admin writes are rare; this many lost WATCH races in a row means something is wrong.
MAX_ATTEMPTS = 50


def profile(config: RedisStoreConfig) -> Profile:
    """A pooled connection the server closed (a restart, an idle timeout) fails its next
    command; one retry on a fresh connection hides that. Safe here: every command the
    store sends may run twice (SETs, a transaction that starts over, a read script). The
    timeouts and the connection cap keep a slow Redis, or a flood of lookups of keys
    nobody knows, from holding connections without end: Redis's `maxclients` is shared
    with the limiter."""
    return Profile(
        retries=1,
        retry_timeouts=True,
        max_connections=config.max_connections,
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=config.socket_connect_timeout,
    )


# The hot path's one round trip: the hash index, the key record, its last-used time and
# each of its teams. KEYS[1] is the hash index entry; the other names are built from
# ARGV[1] (`{prefix}:`): they share its hash tag, so they are in its cluster slot.
FIND_KEY = """
local id = redis.call('GET', KEYS[1])
if not id then return false end
local base = ARGV[1]
local record = redis.call('GET', base .. 'key:' .. id)
if not record then return false end
local out = {record, redis.call('HGET', base .. 'key-used', id), redis.call('PTTL', KEYS[1])}
for _, team in ipairs(cjson.decode(record)['teams']) do
  local found = redis.call('GET', base .. 'team:' .. team)
  if found then out[#out + 1] = found end
end
return out
"""


def _unreachable_is_unavailable(cls: type[T]) -> type[T]:
    """Every public operation raises `StoreUnavailable` (529) when Redis cannot be reached,
    instead of letting a client library's connection error surface as a 500. Each is also
    timed for the store's `observer`, when the app has set one (its metrics)."""
    for name, method in list(vars(cls).items()):
        if (
            name.startswith("_")
            or name in ("invalidations", "close", "from_config")
            or not inspect.iscoroutinefunction(method)
        ):
            continue

        def wrap(method: Callable[..., Awaitable[Any]] = method, name: str = name) -> Callable[..., Awaitable[Any]]:
            @functools.wraps(method)
            async def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
                observer = self.observer
                started = time.perf_counter()
                try:
                    async with self._turn():
                        result = await method(self, *args, **kwargs)
                except Exception as exc:
                    if observer is not None:
                        observer.round_trip("store", name, time.perf_counter() - started, exc)
                    if unreachable(exc):
                        raise StoreUnavailable(f"the key store cannot be reached ({type(exc).__name__})") from exc
                    raise
                if observer is not None:
                    observer.round_trip("store", name, time.perf_counter() - started)
                return result

            return guarded

        setattr(cls, name, wrap())
    return cls


def _honour_lost_cancellation() -> None:
    """redis-py (8.1) swallows a cancellation that arrives while it connects for a
    subscription, leaving the task `cancelling()`; without this, a shutdown right after a
    start waited on the feed's next silence (`keepalive`, twice)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _float(value: bytes | str | None) -> float | None:
    return float(value) if value is not None else None


def _key_json(key: ApiKey) -> str:
    # last_used_at lives in `key-used` (one HSET per batch, not a record rewrite). No
    # owner is no field: such a record reads as it did before owners were recorded.
    exclude: dict = {"last_used_at": True, **_unset_new_limits(key.limits)}
    if key.managed_by is None:
        exclude["managed_by"] = True
    return key.model_dump_json(exclude=exclude)


def _team_json(team: Team) -> str:
    exclude: dict = _unset_new_limits(team.limits)
    if team.managed_by is None:
        exclude["managed_by"] = True
    return team.model_dump_json(exclude=exclude or None)


def _unset_new_limits(limits: Limits) -> dict:
    """Limits added since records were first written, left out while unset: a gateway
    from before them (one still running in a rolling upgrade) reads the record, where
    its strict `Limits` would refuse a field it does not know."""
    return {} if limits.count_tokens_per_minute is not None else {"limits": {"count_tokens_per_minute": True}}


@_unreachable_is_unavailable
class RedisStore:
    kind = "redis"

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "gw",
        keepalive: float = 15.0,
        max_operations: int | None = None,
        wait: float = 2.0,
    ) -> None:
        """`client` (a server's, Sentinel's master's or a cluster's) becomes the store's
        (closed by `close()`). `keepalive`: seconds of silence on the change feed after
        which the store pings Redis, and the longest it then waits for the answer before
        calling the connection lost. `max_operations`: how many operations may use Redis
        at once (each holds one connection), whatever the shape (a cluster's transactions
        run on clients of their own); the others wait up to `wait` seconds for a turn,
        then the store is unavailable."""
        self._redis = client
        self._prefix = prefix
        self._base = "{" + prefix + "}:"
        self._channel = f"{prefix}:invalidate"
        self._keepalive = keepalive
        self._find = client.register_script(FIND_KEY)
        self._slot = SlotClients(client)
        # Each live subscription's pubsub and the client it came from.
        self._feeds: dict[PubSub, Redis] = {}
        self._room = asyncio.Semaphore(max_operations) if max_operations is not None else None
        self._wait = wait
        self._closed = False
        # Told of each operation's time and failure (`round_trip`); set by the app to its
        # metrics (`metrics.RedisObserver`).
        self.observer: Observer | None = None

    @classmethod
    def from_config(cls, config: RedisStoreConfig) -> RedisStore:
        return cls(
            connect(config, profile(config)),
            prefix=config.prefix,
            max_operations=config.max_connections,
            wait=config.socket_timeout,
        )

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """One of `max_operations` turns, waiting at most `wait` for one: a flood of lookups
        queues here for a while, then fails as an outage would, instead of opening
        connections until Redis refuses everyone's."""
        room = self._room
        if room is None:
            yield
            return
        if room.locked():  # (no timer on the usual path: a free turn is taken at once)
            try:
                async with asyncio.timeout(self._wait):
                    await room.acquire()
            except TimeoutError:
                raise RedisConnectionError(f"no free connection to the key store within {self._wait:g}s") from None
        else:
            await room.acquire()
        try:
            yield
        finally:
            room.release()

    async def close(self) -> None:
        self._closed = True
        for pubsub, feed in list(self._feeds.items()):
            await pubsub.aclose()
            await feed.aclose()
        await self._slot.aclose()
        await self._redis.aclose()

    # ---------------------------------------------------------------- names
    def _team(self, team_id: str) -> str:
        return f"{self._base}team:{team_id}"

    def _key(self, key_id: str) -> str:
        return f"{self._base}key:{key_id}"

    def _hash(self, key_hash: str) -> str:
        return f"{self._base}keyhash:{key_hash}"

    def _team_keys(self, team_id: str) -> str:
        return f"{self._base}team-keys:{team_id}"

    @property
    def _teams(self) -> str:
        return f"{self._base}teams"

    @property
    def _keys(self) -> str:
        return f"{self._base}keys"

    @property
    def _used(self) -> str:
        return f"{self._base}key-used"

    # ---------------------------------------------------------------- teams
    async def create_team(self, team: Team) -> Team:
        name = self._team(team.id)

        async def step(pipe: Pipeline) -> Team:
            if await pipe.exists(name):
                raise Conflict(f"team '{team.id}' already exists")
            pipe.multi()
            pipe.set(name, _team_json(team))
            pipe.sadd(self._teams, team.id)
            return team

        return await self._transact([name], step)

    async def put_team(self, team: Team) -> Team:
        async def write(client: Redis) -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(self._team(team.id), _team_json(team))
                pipe.sadd(self._teams, team.id)
                pipe.publish(self._channel, f"team:{team.id}")
                await pipe.execute()

        await self._slot.run(self._base, write)
        return team

    async def get_team(self, team_id: str) -> Team | None:
        raw = await self._redis.get(self._team(team_id))
        return _record(Team, raw) if raw is not None else None

    async def list_teams(self) -> list[Team]:
        ids = sorted(_text(team_id) for team_id in await self._redis.smembers(self._teams))
        if not ids:
            return []
        raws = await self._redis.mget([self._team(team_id) for team_id in ids])
        return [_record(Team, raw) for raw in raws if raw is not None]

    async def update_team(self, team_id: str, changes: Mapping[str, Any]) -> Team:
        name = self._team(team_id)

        async def step(pipe: Pipeline) -> Team:
            raw = await pipe.get(name)
            if raw is None:
                raise NotFound(f"no team '{team_id}'")
            new = changed_team(_record(Team, raw), changes)
            pipe.multi()
            pipe.set(name, _team_json(new))
            pipe.publish(self._channel, f"team:{team_id}")
            return new

        return await self._transact([name], step)

    async def delete_team(self, team_id: str) -> None:
        name, members = self._team(team_id), self._team_keys(team_id)

        async def step(pipe: Pipeline) -> None:
            if not await pipe.exists(name):
                raise NotFound(f"no team '{team_id}'")
            key_names = [self._key(_text(key_id)) for key_id in await pipe.smembers(members)]
            if key_names:
                # A key revoked (or re-teamed) meanwhile must not let this through.
                await pipe.watch(*key_names)
                keys = [_record(ApiKey, raw) for raw in await pipe.mget(key_names) if raw is not None]
                live = sorted(key.id for key in keys if team_id in key.teams and key.revoked_at is None)
                if live:
                    raise Conflict(f"team '{team_id}' still has keys that are not revoked: {', '.join(live)}")
            pipe.multi()
            pipe.delete(name)
            pipe.srem(self._teams, team_id)
            pipe.publish(self._channel, f"team:{team_id}")

        await self._transact([name, members], step)

    # ---------------------------------------------------------------- keys
    async def create_key(self, key: ApiKey) -> ApiKey:
        check_default_team(key)
        record = key.model_copy(update={"last_used_at": None})
        name, index = self._key(key.id), self._hash(key.hash)
        team_names = [self._team(team) for team in key.teams]

        async def step(pipe: Pipeline) -> ApiKey:
            if await pipe.exists(name):
                raise Conflict(f"key '{key.id}' already exists")
            if await pipe.exists(index):
                raise Conflict("another key already has this hash")
            await self._check_teams(pipe, record)
            pipe.multi()
            pipe.set(name, _key_json(record))
            pipe.set(index, key.id)
            pipe.zadd(self._keys, {key.id: key.created_at})
            for team in key.teams:
                pipe.sadd(self._team_keys(team), key.id)
            pipe.publish(self._channel, f"key:{key.id}")
            return record

        return await self._transact([name, index, *team_names], step)

    async def put_key(self, key: ApiKey) -> ApiKey:
        check_default_team(key)
        name = self._key(key.id)

        async def step(pipe: Pipeline) -> ApiKey:
            existing, used = await self._read_for_update(pipe, key.id)
            record = merge_put_key(existing, key)
            index = self._hash(record.hash)
            await pipe.watch(index)
            owner = await pipe.get(index)
            if owner is not None and _text(owner) != key.id:
                raise Conflict("another key already has this hash")
            await self._check_teams(pipe, record)
            pipe.multi()
            pipe.set(name, _key_json(record))
            pipe.set(index, key.id)  # a plain SET also drops any TTL: this hash is current now
            if existing is not None and existing.hash != record.hash:
                pipe.delete(self._hash(existing.hash))
            pipe.zadd(self._keys, {key.id: record.created_at})
            self._move_teams(pipe, key.id, existing.teams if existing else (), record.teams)
            pipe.publish(self._channel, f"key:{key.id}")
            return record.model_copy(update={"last_used_at": used})

        return await self._transact([name], step)

    async def get_key(self, key_id: str) -> ApiKey | None:
        async def read(client: Redis) -> list:
            async with client.pipeline(transaction=False) as pipe:
                pipe.get(self._key(key_id))
                pipe.hget(self._used, key_id)
                return await pipe.execute()

        raw, used = await self._slot.run(self._base, read)
        return self._parse_key(raw, used) if raw is not None else None

    async def list_keys(self, team: str | None = None) -> list[ApiKey]:
        if team is None:
            # Without `withscores`, the members alone (the type covers both).
            members = cast("list[bytes | str]", await self._redis.zrange(self._keys, 0, -1))
            ids = [_text(key_id) for key_id in members]
        else:
            ids = [_text(key_id) for key_id in await self._redis.smembers(self._team_keys(team))]
        if not ids:
            return []

        async def read(client: Redis) -> list:
            async with client.pipeline(transaction=False) as pipe:
                pipe.mget([self._key(key_id) for key_id in ids])
                pipe.hmget(self._used, ids)
                return await pipe.execute()

        raws, used = await self._slot.run(self._base, read)
        keys = [self._parse_key(raw, at) for raw, at in zip(raws, used, strict=True) if raw is not None]
        keys.sort(key=lambda key: (key.created_at, key.id))
        return keys

    async def update_key(self, key_id: str, changes: Mapping[str, Any]) -> ApiKey:
        name = self._key(key_id)

        async def step(pipe: Pipeline) -> ApiKey:
            existing, used = await self._read_for_update(pipe, key_id)
            if existing is None:
                raise NotFound(f"no key '{key_id}'")
            new = changed_key(existing, changes)
            await self._check_teams(pipe, new)
            pipe.multi()
            pipe.set(name, _key_json(new))
            self._move_teams(pipe, key_id, existing.teams, new.teams)
            pipe.publish(self._channel, f"key:{key_id}")
            return new.model_copy(update={"last_used_at": used})

        return await self._transact([name], step)

    async def revoke_key(self, key_id: str, at: float) -> ApiKey:
        name = self._key(key_id)

        async def step(pipe: Pipeline) -> ApiKey:
            existing, used = await self._read_for_update(pipe, key_id)
            if existing is None:
                raise NotFound(f"no key '{key_id}'")
            if existing.revoked_at is not None:
                return existing.model_copy(update={"last_used_at": used})
            new = existing.model_copy(update={"revoked_at": at})
            pipe.multi()
            pipe.set(name, _key_json(new))
            pipe.publish(self._channel, f"key:{key_id}")
            return new.model_copy(update={"last_used_at": used})

        return await self._transact([name], step)

    async def rotate_key(self, key_id: str, new_hash: str, new_prefix: str, grace_seconds: float, at: float) -> ApiKey:
        name, index = self._key(key_id), self._hash(new_hash)

        async def step(pipe: Pipeline) -> ApiKey:
            existing, used = await self._read_for_update(pipe, key_id)
            if existing is None:
                raise NotFound(f"no key '{key_id}'")
            if existing.revoked_at is not None:
                raise InvalidRequest(f"key '{key_id}' is revoked; a revoked key cannot be rotated")
            if await pipe.exists(index):
                raise Conflict("another key already has this hash")
            new = existing.model_copy(update={"hash": new_hash, "prefix": new_prefix, "rotated_at": at})
            old_index = self._hash(existing.hash)
            pipe.multi()
            pipe.set(name, _key_json(new))
            pipe.set(index, key_id)
            if grace_seconds > 0:
                # Redis expires the old hash itself: nothing to sweep later.
                pipe.set(old_index, key_id, px=max(1, round(grace_seconds * 1000)))
            else:
                pipe.delete(old_index)
            pipe.publish(self._channel, f"key:{key_id}")
            return new.model_copy(update={"last_used_at": used})

        return await self._transact([name, index], step)

    async def find_key(self, key_hash: str) -> FoundKey | None:
        found = await self._find(keys=[self._hash(key_hash)], args=[self._base])
        if not found:
            return None
        raw, used, ttl, *teams = found
        # A rotated-out hash's time to live is its grace left (whole milliseconds, rounded
        # down; -1: none), counted from the answer's arrival: never before Redis lets go.
        expires = time.time() + (ttl + 1) / 1000 if ttl >= 0 else None
        return FoundKey(self._parse_key(raw, used), [_record(Team, team) for team in teams], expires)

    async def ping(self) -> None:
        """One PING (readiness: `/readyz`); on a cluster, one to each master: the
        limiter's teams live on all of them."""
        if isinstance(self._redis, RedisCluster):
            await self._redis.ping(target_nodes=RedisCluster.PRIMARIES)
        else:
            await self._redis.ping()

    async def record_last_used(self, used: Mapping[str, float]) -> None:
        if used:
            # redis-py types the map invariant in its keys (any field type), so str keys do not fit.
            await self._redis.hset(self._used, mapping=dict(used))  # type: ignore[arg-type]

    # ---------------------------------------------------------------- change feed
    async def invalidations(self) -> AsyncIterator[str]:
        """Subscribes on a connection of its own (`redis.clients.feed_client`: no retries,
        a silent reconnect would hide lost messages). Failing to subscribe raises; losing
        the connection afterwards ends the iterator."""
        feed = await feed_client(self._redis, self._base)
        pubsub = feed.pubsub()
        self._feeds[pubsub] = feed
        try:
            await pubsub.subscribe(self._channel)
            _honour_lost_cancellation()
            confirmed = await pubsub.get_message(timeout=self._keepalive)
            if confirmed is None or confirmed["type"] != "subscribe":
                raise RedisConnectionError(f"Redis did not confirm the subscription to {self._channel}")
            yield ALL
            async for message in self._listen(pubsub):
                yield message
        finally:
            self._feeds.pop(pubsub, None)
            await pubsub.aclose()
            await feed.aclose()

    async def _listen(self, pubsub: PubSub) -> AsyncIterator[str]:
        # A server that dies closes the socket and the read fails at once; one that hangs
        # (or a network that drops packets) says nothing, hence the ping after a silence.
        pinged = False
        while True:
            try:
                message = await pubsub.get_message(timeout=self._keepalive)
                if message is None:
                    if pinged:
                        log.warning("store change feed: no answer from Redis in %ss; resubscribing", self._keepalive)
                        return
                    await pubsub.ping()
                    pinged = True
                    continue
            except (RedisError, OSError) as exc:
                if not self._closed:
                    log.warning("store change feed: connection lost (%s); resubscribing", exc)
                return
            pinged = False  # anything at all proves the connection alive
            if message["type"] == "message":
                yield _text(message["data"])

    # ---------------------------------------------------------------- helpers
    async def _transact(self, watch: list[str], step: Callable[[Pipeline], Awaitable[T]]) -> T:
        """WATCH `watch`, run `step` (reads, then `pipe.multi()` and the writes, or no
        writes at all), EXEC; again from the start if a watched key changed meanwhile."""
        for _ in range(MAX_ATTEMPTS):
            done, result = await self._slot.run(self._base, lambda client: self._attempt(client, watch, step))
            if done:
                return result
        raise GatewayError(f"the store is too busy: gave up after {MAX_ATTEMPTS} conflicting writes")

    @staticmethod
    async def _attempt(client: Redis, watch: list[str], step: Callable[[Pipeline], Awaitable[T]]) -> tuple[bool, T]:
        """One try of `_transact`: (False, _) when a watched key changed."""
        async with client.pipeline(transaction=True) as pipe:
            await pipe.watch(*watch)
            result = await step(pipe)
            if not pipe.explicit_transaction:
                return True, result
            try:
                await pipe.execute()
            except WatchError:
                return False, result
            return True, result

    async def _read_for_update(self, pipe: Pipeline, key_id: str) -> tuple[ApiKey | None, float | None]:
        raw = await pipe.get(self._key(key_id))
        used = await pipe.hget(self._used, key_id)
        return (_record(ApiKey, raw) if raw is not None else None), _float(used)

    async def _check_teams(self, pipe: Pipeline, key: ApiKey) -> None:
        """Every team the key names exists, and stays so until EXEC (watched)."""
        names = [self._team(team) for team in key.teams]
        await pipe.watch(*names)
        found = await pipe.mget(names)
        missing = [team for team, raw in zip(key.teams, found, strict=True) if raw is None]
        if missing:
            raise missing_teams_error(missing)

    def _move_teams(self, pipe: Pipeline, key_id: str, old: Iterable[str], new: Iterable[str]) -> None:
        old, new = set(old), set(new)
        for team in old - new:
            pipe.srem(self._team_keys(team), key_id)
        for team in new - old:
            pipe.sadd(self._team_keys(team), key_id)

    def _parse_key(self, raw: bytes | str, used: bytes | str | None) -> ApiKey:
        return _record(ApiKey, raw).model_copy(update={"last_used_at": _float(used)})


Record = TypeVar("Record", bound=BaseModel)


def _record(model: type[Record], raw: bytes | str) -> Record:
    """A stored record, read by this version. Fields it does not know were written by a
    newer one (a rolling upgrade runs both at once): they are left out, not a refusal, so
    the older process keeps serving. The common case pays for one parse only."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if any(error["type"] != "extra_forbidden" for error in exc.errors()):
            raise
    return model.model_validate(_known(model, orjson.loads(raw)))


def _known(model: type[BaseModel], value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    known = {}
    for name, field in model.model_fields.items():
        if name in value:
            inner = field.annotation
            nested = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
            known[name] = _known(nested, value[name]) if nested else value[name]
    return known


__all__ = ["RedisStore"]
