"""The store contract (`gateway/store/base.py`), run against every implementation.

Each test takes `store`, parametrized over the memory store, a Redis store on the
tests' own redis-server and one on their own 3-master Redis Cluster, so none can drift.
Tests that only make sense for Redis (round trips, key names, prefixes, a server that
dies) are at the end, then those for the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
from pydantic import ValidationError
from redis.asyncio import Connection, ConnectionPool, Redis

from gateway.config import RedisStoreConfig
from gateway.errors import Conflict, InvalidRequest, NotFound, StoreUnavailable
from gateway.identity import ApiKey, Limits, Team, hash_key
from gateway.store import open_store
from gateway.store.base import ALL, Store
from gateway.store.memory import SUBSCRIBER_BACKLOG, MemoryStore
from gateway.store.redis import RedisStore
from tests.support.redis_cluster import LocalRedisCluster, cluster_url_fixture, redis_cluster_fixture  # noqa: F401
from tests.support.redis_server import RedisServer, free_port

# How long a test waits for a message it expects before failing (never hangs).
WAIT = 2.0
GRACE = 0.5


@pytest.fixture(params=["memory", "redis", "cluster"])
def make_store(request: pytest.FixtureRequest) -> Callable[..., Store]:
    """A factory: `make_store(prefix=...)` (the prefix matters only to Redis)."""
    if request.param == "memory":
        return lambda prefix="test": MemoryStore()
    if request.param == "cluster":
        url = request.getfixturevalue("cluster_url")
        return lambda prefix="test": RedisStore.from_config(
            RedisStoreConfig(type="redis", mode="cluster", url=url, prefix=prefix)
        )
    url = request.getfixturevalue("redis_url")
    return lambda prefix="test": RedisStore.from_config(RedisStoreConfig(type="redis", url=url, prefix=prefix))


@pytest.fixture
async def store(make_store: Callable[..., Store]) -> AsyncIterator[Store]:
    made = make_store()
    yield made
    await made.close()


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisStore]:
    made = RedisStore(Redis.from_url(redis_url), prefix="test")
    yield made
    await made.close()


def team(team_id: str, **fields) -> Team:
    fields.setdefault("name", f"Team {team_id}")
    fields.setdefault("created_at", 1000.0)
    return Team(id=team_id, **fields)


def key(key_id: str, raw: str | None = None, teams: tuple[str, ...] = ("a",), **fields) -> ApiKey:
    fields.setdefault("default_team", teams[0])
    fields.setdefault("created_at", 2000.0)
    fields.setdefault("name", key_id)
    raw = raw or f"gk-{key_id}"
    return ApiKey(id=key_id, prefix=raw[:9], hash=hash_key(raw), teams=teams, **fields)


async def with_teams(store: Store, *team_ids: str) -> None:
    for team_id in team_ids:
        await store.create_team(team(team_id))


async def next_message(feed: AsyncIterator[str]) -> str:
    return await asyncio.wait_for(anext(feed), WAIT)


async def subscribed(store: Store) -> AsyncIterator[str]:
    """A live feed: its first message, ALL, says the subscription is in place."""
    feed = store.invalidations()
    assert await next_message(feed) == ALL
    return feed


# ---------------------------------------------------------------- teams


async def test_create_and_get_team(store: Store) -> None:
    created = await store.create_team(team("a", models=("claude-*",), metadata={"owner": "x"}))
    assert created == team("a", models=("claude-*",), metadata={"owner": "x"})
    assert await store.get_team("a") == created
    assert await store.get_team("missing") is None


async def test_create_team_with_a_taken_id_is_a_conflict(store: Store) -> None:
    await store.create_team(team("a"))
    with pytest.raises(Conflict):
        await store.create_team(team("a", name="other"))
    assert (await store.get_team("a")).name == "Team a"


async def test_list_teams_is_ordered_by_id(store: Store) -> None:
    assert await store.list_teams() == []
    await with_teams(store, "b", "c", "a")
    assert [t.id for t in await store.list_teams()] == ["a", "b", "c"]


async def test_put_team_creates_then_replaces(store: Store) -> None:
    await store.put_team(team("a", name="first"))
    replaced = await store.put_team(team("a", name="second", models=("x",)))
    assert replaced.name == "second"
    assert await store.get_team("a") == team("a", name="second", models=("x",))
    assert [t.id for t in await store.list_teams()] == ["a"]


async def test_update_team(store: Store) -> None:
    await store.create_team(team("a"))
    updated = await store.update_team("a", {"name": "New", "models": ["m-*"], "limits": {"requests_per_minute": 5}})
    # Values are validated as a record is: a list becomes a tuple, a dict a Limits.
    assert updated == team("a", name="New", models=("m-*",), limits=Limits(requests_per_minute=5))
    assert await store.get_team("a") == updated


async def test_update_team_refuses_unknown_ids_and_fields(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.update_team("missing", {"name": "x"})
    await store.create_team(team("a"))
    with pytest.raises(InvalidRequest, match="id"):
        await store.update_team("a", {"id": "b"})
    with pytest.raises(InvalidRequest):
        await store.update_team("a", {"limits": {"requests_per_minute": -1}})
    assert await store.get_team("a") == team("a")


async def test_delete_team(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.delete_team("missing")
    await with_teams(store, "a", "b")
    await store.delete_team("b")
    assert await store.get_team("b") is None
    assert [t.id for t in await store.list_teams()] == ["a"]


async def test_delete_team_is_refused_while_a_key_is_not_revoked(store: Store) -> None:
    await with_teams(store, "a", "b")
    # The team is the key's second team, not its default: it still counts.
    await store.create_key(key("k1", teams=("a", "b")))
    with pytest.raises(Conflict, match="k1"):
        await store.delete_team("b")
    assert await store.get_team("b") is not None

    await store.revoke_key("k1", at=3000.0)
    await store.delete_team("b")
    assert await store.get_team("b") is None
    # The revoked key survives, and is found without the team that is gone.
    found = await store.find_key(hash_key("gk-k1"))
    assert found is not None
    assert [t.id for t in found[1]] == ["a"]


# ---------------------------------------------------------------- keys


async def test_create_and_get_key(store: Store) -> None:
    await with_teams(store, "a")
    created = await store.create_key(key("k1", models=("m",), limits=Limits(concurrent_requests=2), expires_at=9e9))
    assert created == key("k1", models=("m",), limits=Limits(concurrent_requests=2), expires_at=9e9)
    assert await store.get_key("k1") == created
    assert await store.get_key("missing") is None


async def test_create_key_conflicts(store: Store) -> None:
    await with_teams(store, "a")
    await store.create_key(key("k1", raw="gk-one"))
    with pytest.raises(Conflict):
        await store.create_key(key("k1", raw="gk-two"))  # the id is taken
    with pytest.raises(Conflict):
        await store.create_key(key("k2", raw="gk-one"))  # the hash is taken
    assert [k.id for k in await store.list_keys()] == ["k1"]
    assert await store.find_key(hash_key("gk-two")) is None


async def test_create_key_with_an_unknown_team_names_it(store: Store) -> None:
    await with_teams(store, "a")
    with pytest.raises(InvalidRequest, match="'ghost'"):
        await store.create_key(key("k1", teams=("a", "ghost")))
    assert await store.get_key("k1") is None
    assert await store.find_key(hash_key("gk-k1")) is None


async def test_create_key_default_team_must_be_one_of_its_teams(store: Store) -> None:
    await with_teams(store, "a", "b")
    with pytest.raises(InvalidRequest, match="default_team"):
        await store.create_key(key("k1", teams=("a",), default_team="b"))
    assert await store.get_key("k1") is None


async def test_list_keys_in_creation_order_and_by_team(store: Store) -> None:
    await with_teams(store, "a", "b")
    await store.create_key(key("k3", teams=("a",), created_at=3.0))
    await store.create_key(key("k1", teams=("a", "b"), created_at=1.0))
    await store.create_key(key("k2", teams=("b",), created_at=2.0))
    await store.create_key(key("k0", teams=("b",), created_at=2.0))  # a tie: ordered by id
    await store.revoke_key("k2", at=10.0)
    assert [k.id for k in await store.list_keys()] == ["k1", "k0", "k2", "k3"]
    assert [k.id for k in await store.list_keys(team="a")] == ["k1", "k3"]
    assert [k.id for k in await store.list_keys(team="b")] == ["k1", "k0", "k2"]
    assert await store.list_keys(team="missing") == []
    assert (await store.list_keys(team="b"))[2].revoked_at == 10.0


async def test_update_key(store: Store) -> None:
    await with_teams(store, "a", "b")
    await store.create_key(key("k1", teams=("a",)))
    updated = await store.update_key(
        "k1", {"name": "renamed", "teams": ["a", "b"], "default_team": "b", "models": ["m"], "expires_at": 5e9}
    )
    assert updated == key("k1", name="renamed", teams=("a", "b"), default_team="b", models=("m",), expires_at=5e9)
    assert await store.get_key("k1") == updated
    assert [k.id for k in await store.list_keys(team="b")] == ["k1"]

    await store.update_key("k1", {"teams": ["b"]})
    assert await store.list_keys(team="a") == []
    assert [k.id for k in await store.list_keys(team="b")] == ["k1"]
    found = await store.find_key(hash_key("gk-k1"))
    assert [t.id for t in found[1]] == ["b"]


async def test_update_key_refusals(store: Store) -> None:
    await with_teams(store, "a")
    with pytest.raises(NotFound):
        await store.update_key("missing", {"name": "x"})
    await store.create_key(key("k1"))
    with pytest.raises(InvalidRequest, match="'ghost'"):
        await store.update_key("k1", {"teams": ["a", "ghost"]})
    with pytest.raises(InvalidRequest, match="default_team"):
        await store.update_key("k1", {"default_team": "b"})
    with pytest.raises(InvalidRequest, match="hash"):
        await store.update_key("k1", {"hash": hash_key("other")})
    with pytest.raises(InvalidRequest, match="revoked_at"):
        await store.update_key("k1", {"revoked_at": None})
    assert await store.get_key("k1") == key("k1")


async def test_revoke_key_is_idempotent_and_the_key_is_still_found(store: Store) -> None:
    await with_teams(store, "a")
    with pytest.raises(NotFound):
        await store.revoke_key("missing", at=1.0)
    await store.create_key(key("k1"))
    revoked = await store.revoke_key("k1", at=3000.0)
    assert revoked.revoked_at == 3000.0
    again = await store.revoke_key("k1", at=4000.0)
    assert again.revoked_at == 3000.0  # the first revocation stands
    assert (await store.get_key("k1")).revoked_at == 3000.0
    # Found, so the caller can say "revoked" rather than "invalid".
    found = await store.find_key(hash_key("gk-k1"))
    assert found is not None
    assert found[0].revoked_at == 3000.0
    assert not found[0].usable(now=3001.0)


async def test_rotate_key_old_hash_works_during_its_grace_only(store: Store) -> None:
    await with_teams(store, "a")
    await store.create_key(key("k1", raw="gk-old"))
    before = time.time()
    rotated = await store.rotate_key("k1", hash_key("gk-new"), "gk-new", grace_seconds=GRACE, at=5000.0)
    assert (rotated.hash, rotated.prefix, rotated.rotated_at) == (hash_key("gk-new"), "gk-new", 5000.0)
    assert await store.get_key("k1") == rotated

    new = await store.find_key(hash_key("gk-new"))
    old = await store.find_key(hash_key("gk-old"))
    assert new is not None and new[0] == rotated and new.hash_expires_at is None
    assert old is not None and old[0] == rotated  # the previous hash finds the current record
    # ...and says when it stops: a cache must not trust it past that (Redis counts in ms).
    assert before + GRACE <= old.hash_expires_at <= time.time() + GRACE + 0.001
    # While its grace lasts, the old hash is still taken.
    with pytest.raises(Conflict):
        await store.create_key(key("k2", raw="gk-old"))

    await asyncio.sleep(GRACE + 0.2)
    assert await store.find_key(hash_key("gk-old")) is None
    assert (await store.find_key(hash_key("gk-new")))[0].id == "k1"
    await store.create_key(key("k2", raw="gk-old"))  # and free again once it is over


async def test_rotate_key_without_grace_kills_the_old_hash_at_once(store: Store) -> None:
    await with_teams(store, "a")
    await store.create_key(key("k1", raw="gk-old"))
    await store.rotate_key("k1", hash_key("gk-new"), "gk-new", grace_seconds=0, at=5000.0)
    assert await store.find_key(hash_key("gk-old")) is None
    assert (await store.find_key(hash_key("gk-new")))[0].id == "k1"


async def test_rotate_key_refusals(store: Store) -> None:
    await with_teams(store, "a")
    with pytest.raises(NotFound):
        await store.rotate_key("missing", hash_key("x"), "x", grace_seconds=0, at=1.0)
    await store.create_key(key("k1", raw="gk-one"))
    await store.create_key(key("k2", raw="gk-two"))
    with pytest.raises(Conflict):
        await store.rotate_key("k1", hash_key("gk-two"), "gk-two", grace_seconds=0, at=1.0)
    await store.revoke_key("k1", at=2.0)
    with pytest.raises(InvalidRequest, match="revoked"):
        await store.rotate_key("k1", hash_key("gk-three"), "gk-three", grace_seconds=0, at=3.0)
    assert (await store.get_key("k1")).hash == hash_key("gk-one")
    assert await store.find_key(hash_key("gk-three")) is None


async def test_put_key_creates_then_updates_in_place(store: Store) -> None:
    await with_teams(store, "a", "b")
    created = await store.put_key(key("k1", created_at=100.0))
    assert created == key("k1", created_at=100.0)
    updated = await store.put_key(key("k1", name="renamed", teams=("a", "b"), models=("m",), created_at=200.0))
    # Declared fields replaced; the creation time is the stored one.
    assert updated == key("k1", name="renamed", teams=("a", "b"), models=("m",), created_at=100.0)
    assert await store.get_key("k1") == updated
    assert [k.id for k in await store.list_keys(team="b")] == ["k1"]
    assert [t.id for t in (await store.find_key(hash_key("gk-k1")))[1]] == ["a", "b"]


async def test_put_key_never_unrevokes(store: Store) -> None:
    await with_teams(store, "a")
    await store.put_key(key("k1"))
    await store.revoke_key("k1", at=3000.0)
    again = await store.put_key(key("k1", name="from the file again"))
    assert again.revoked_at == 3000.0
    assert again.name == "from the file again"
    assert (await store.get_key("k1")).revoked_at == 3000.0
    assert (await store.find_key(hash_key("gk-k1")))[0].revoked_at == 3000.0


async def test_put_key_with_a_new_hash_replaces_the_old_one_at_once(store: Store) -> None:
    """A YAML key whose value changed (`CI_KEY=A`, then `CI_KEY=B`): the file's value is
    the key's, and the previous one stops finding it at once (a rotation without grace)."""
    await with_teams(store, "a")
    await store.put_key(key("k1", raw="gk-first", managed_by="config", created_at=100.0))
    await store.update_key("k1", {"expires_at": 9e9})  # an operator's, which the file does not declare
    again = await store.put_key(key("k1", raw="gk-second", managed_by="config", rotated_at=4000.0, created_at=200.0))
    assert (again.hash, again.prefix, again.rotated_at) == (hash_key("gk-second"), "gk-second", 4000.0)
    assert (again.created_at, again.expires_at, again.managed_by) == (100.0, 9e9, "config")
    assert await store.find_key(hash_key("gk-first")) is None
    assert (await store.find_key(hash_key("gk-second"))).key == again
    await store.create_key(key("k2", raw="gk-first"))  # the old hash is free again
    # The same hash again changes no rotation time, whatever the declared one says.
    assert (await store.put_key(key("k1", raw="gk-second", rotated_at=5000.0))).rotated_at == 4000.0


async def test_put_key_keeps_what_the_file_does_not_declare(store: Store) -> None:
    await with_teams(store, "a")
    await store.put_key(key("k1", limits=Limits(requests_per_minute=5)))
    await store.update_key("k1", {"expires_at": 9e9})
    again = await store.put_key(key("k1", limits=Limits(requests_per_minute=7)))
    assert again.expires_at == 9e9 and again.limits == Limits(requests_per_minute=7)
    assert (await store.get_key("k1")).expires_at == 9e9


async def test_put_key_refusals(store: Store) -> None:
    await with_teams(store, "a")
    await store.create_key(key("k1", raw="gk-one"))
    with pytest.raises(Conflict):
        await store.put_key(key("k2", raw="gk-one"))
    with pytest.raises(InvalidRequest, match="'ghost'"):
        await store.put_key(key("k3", teams=("ghost",)))
    with pytest.raises(InvalidRequest, match="default_team"):
        await store.put_key(key("k3", teams=("a",), default_team="b"))
    assert [k.id for k in await store.list_keys()] == ["k1"]


async def test_find_key_returns_the_key_and_all_its_teams(store: Store) -> None:
    await store.create_team(team("a", models=("a-*",)))
    await store.create_team(team("b", limits=Limits(tokens_per_day=7)))
    await store.create_team(team("c"))
    created = await store.create_key(key("k1", teams=("b", "a"), default_team="a"))
    found = await store.find_key(hash_key("gk-k1"))
    assert found is not None
    found_key, teams, hash_expires_at = found
    assert found_key == created and hash_expires_at is None  # the current hash does not run out
    assert sorted(teams, key=lambda t: t.id) == [team("a", models=("a-*",)), team("b", limits=Limits(tokens_per_day=7))]
    assert await store.find_key(hash_key("gk-unknown")) is None


async def test_find_key_returns_expired_keys_too(store: Store) -> None:
    await with_teams(store, "a")
    await store.create_key(key("k1", expires_at=1.0))
    found = await store.find_key(hash_key("gk-k1"))
    assert found is not None and not found[0].usable(now=time.time())


async def test_last_used_times_are_recorded_and_visible(store: Store) -> None:
    await with_teams(store, "a")
    await store.create_key(key("k1"))
    await store.create_key(key("k2", created_at=2001.0))
    await store.record_last_used({})
    await store.record_last_used({"k1": 1234.5, "k2": 99.25})
    assert (await store.get_key("k1")).last_used_at == 1234.5
    assert [k.last_used_at for k in await store.list_keys()] == [1234.5, 99.25]
    assert [k.last_used_at for k in await store.list_keys(team="a")] == [1234.5, 99.25]
    assert (await store.find_key(hash_key("gk-k1")))[0].last_used_at == 1234.5
    await store.record_last_used({"k1": 2000.0})
    assert (await store.get_key("k1")).last_used_at == 2000.0
    # Later changes to the record keep the time (it is not part of what they write).
    assert (await store.update_key("k1", {"name": "x"})).last_used_at == 2000.0
    assert (await store.revoke_key("k1", at=3.0)).last_used_at == 2000.0
    assert (await store.get_key("k1")).last_used_at == 2000.0


async def test_records_are_immutable_values(store: Store) -> None:
    await store.create_team(team("a", metadata={"owner": "x"}))
    await store.create_key(key("k1"))
    team_before = await store.get_team("a")
    key_before = await store.get_key("k1")
    found_before = await store.find_key(hash_key("gk-k1"))

    await store.update_team("a", {"name": "changed", "metadata": {"owner": "y"}})
    await store.update_key("k1", {"name": "changed"})
    await store.revoke_key("k1", at=1.0)
    await store.record_last_used({"k1": 5.0})

    assert team_before == team("a", metadata={"owner": "x"})
    assert key_before == key("k1")
    assert found_before[0] == key("k1")
    with pytest.raises(ValidationError):
        key_before.name = "x"
    # The one mutable part of a record, a team's metadata, is a copy: editing it edits nothing.
    got = await store.get_team("a")
    got.metadata["owner"] = "mallory"
    assert (await store.get_team("a")).metadata == {"owner": "y"}
    assert (await store.find_key(hash_key("gk-k1")))[1][0].metadata == {"owner": "y"}


async def test_concurrent_updates_are_not_lost(store: Store) -> None:
    await with_teams(store, "a")
    await store.create_key(key("k1"))
    await asyncio.gather(*(store.update_key("k1", {field: "set"}) for field in ("name", "description")))
    got = await store.get_key("k1")
    assert (got.name, got.description) == ("set", "set")


async def test_a_team_is_never_deleted_under_a_key_created_at_the_same_time(store: Store) -> None:
    for i in range(10):
        await store.create_team(team(f"t{i}"))
        created, deleted = await asyncio.gather(
            store.create_key(key(f"k{i}", teams=(f"t{i}",))), store.delete_team(f"t{i}"), return_exceptions=True
        )
        # One of them wins; the other sees what the winner did.
        assert isinstance(created, InvalidRequest) != isinstance(deleted, Conflict), (created, deleted)
        if not isinstance(created, Exception):
            assert await store.get_team(f"t{i}") is not None


# ---------------------------------------------------------------- change feed


async def test_every_change_to_a_key_or_a_team_is_announced(store: Store) -> None:
    await with_teams(store, "a", "b")
    await store.create_key(key("k1"))
    await store.create_key(key("k2", teams=("b",)))
    async with contextlib.aclosing(await subscribed(store)) as feed:
        changes = [
            # A new key too: a process may be refusing its hash from its cache of unknown keys.
            (store.create_key(key("k4")), "key:k4"),
            (store.revoke_key("k2", at=1.0), "key:k2"),
            (store.rotate_key("k1", hash_key("gk-new"), "gk-new", grace_seconds=0, at=2.0), "key:k1"),
            (store.update_key("k1", {"models": ["m"]}), "key:k1"),
            (store.put_key(key("k3")), "key:k3"),
            (store.update_team("a", {"models": ["m"]}), "team:a"),
            (store.put_team(team("a", name="again")), "team:a"),
            (store.delete_team("b"), "team:b"),
        ]
        for change, message in changes:
            await change
            assert await next_message(feed) == message


async def test_a_change_that_changes_nothing_is_not_announced(store: Store) -> None:
    await with_teams(store, "a")
    await store.create_key(key("k1"))
    await store.revoke_key("k1", at=1.0)
    async with contextlib.aclosing(await subscribed(store)) as feed:
        await store.revoke_key("k1", at=2.0)  # already revoked
        await store.update_team("a", {"name": "x"})
        assert await next_message(feed) == "team:a"


async def test_every_subscriber_hears_every_change(store: Store) -> None:
    await with_teams(store, "a")
    async with contextlib.aclosing(await subscribed(store)) as one, contextlib.aclosing(await subscribed(store)) as two:
        await store.update_team("a", {"name": "x"})
        assert await next_message(one) == "team:a"
        assert await next_message(two) == "team:a"
    # Subscribers that left are not written to: a later change reaches only a new one.
    async with contextlib.aclosing(await subscribed(store)) as three:
        await store.put_team(team("a"))
        assert await next_message(three) == "team:a"


async def test_close_ends_the_feed(store: Store) -> None:
    feed = await subscribed(store)
    waiting = asyncio.ensure_future(anext(feed))
    await asyncio.sleep(0.05)
    await store.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, WAIT)


class Watching:
    """An observer as the app's metrics are one: it keeps what it is told."""

    def __init__(self) -> None:
        self.round_trips: list[tuple[str, str, BaseException | None]] = []

    def round_trip(self, component: str, operation: str, seconds: float, error: BaseException | None = None) -> None:
        self.round_trips.append((component, operation, error))

    def limiter_event(self, event: str) -> None:
        raise AssertionError(f"a store reported a limiter event: {event}")


async def test_ping_answers_while_the_store_serves(store: Store) -> None:
    async with asyncio.timeout(WAIT):
        assert await store.ping() is None


async def test_every_store_has_an_observer_and_tells_it_of_its_round_trips(store: Store) -> None:
    assert store.observer is None  # until the app sets one
    store.observer = watching = Watching()
    await store.create_team(team("a"))
    assert await store.get_team("a") is not None
    await store.ping()
    # In memory there is no round trip to tell of; on Redis, one per operation, none failed.
    expected = [] if store.kind == "memory" else [("store", op, None) for op in ("create_team", "get_team", "ping")]
    assert watching.round_trips == expected


def test_memory_ping_answers_at_once() -> None:
    ping = MemoryStore().ping()
    with pytest.raises(StopIteration):
        ping.send(None)  # complete on its first step: it never waits


async def test_memory_subscriber_that_stops_reading_is_cut_off() -> None:
    store = MemoryStore()
    await store.create_team(team("a"))
    async with contextlib.aclosing(await subscribed(store)) as feed:
        for _ in range(SUBSCRIBER_BACKLOG + 1):
            await store.put_team(team("a"))
        # The backlog is dropped and the iterator ends: the subscriber drops its cache.
        with pytest.raises(StopAsyncIteration):
            await next_message(feed)


# ---------------------------------------------------------------- Redis only


async def test_open_store_builds_a_redis_store_from_the_config(redis_url: str) -> None:
    config = RedisStoreConfig(type="redis", url=redis_url, prefix="cfg")
    store = open_store(config)
    try:
        assert isinstance(store, RedisStore) and store.kind == "redis"
        await store.create_team(team("a"))
        raw = Redis.from_url(redis_url)
        assert await raw.exists("{cfg}:team:a") == 1
        await raw.aclose()
    finally:
        await store.close()


async def test_redis_records_with_no_count_limit_read_as_before_it_existed(redis_url: str) -> None:
    """`count_tokens_per_minute` is newer than the records: left unset, it is no field, so
    a gateway from before it (still running in a rolling upgrade, its `Limits` strict)
    reads teams and keys written by this one."""
    before = {name for name in Limits.model_fields if name != "count_tokens_per_minute"}
    store = RedisStore(Redis.from_url(redis_url), prefix="test")
    raw = Redis.from_url(redis_url)
    try:
        await store.create_team(team("a", limits=Limits(requests_per_minute=5)))
        await store.create_key(key("k1", limits=Limits(tokens_per_day=9)))
        await store.create_team(team("b", limits=Limits(count_tokens_per_minute=7)))
        records = [orjson.loads(await raw.get(name)) for name in ("{test}:team:a", "{test}:key:k1")]
        assert all(set(record["limits"]) == before for record in records)
        assert orjson.loads(await raw.get("{test}:team:b"))["limits"]["count_tokens_per_minute"] == 7
        assert (await store.get_team("a")).limits == Limits(requests_per_minute=5)
        assert (await store.get_team("b")).limits == Limits(count_tokens_per_minute=7)
    finally:
        await raw.aclose()
        await store.close()


async def test_redis_records_from_a_newer_version_are_read_without_its_fields(redis_url: str) -> None:
    """A rolling upgrade runs two versions on one Redis: fields this one does not know
    (at the top of a record, or in its limits) are left out, so it keeps serving; a
    record this version knows and finds wrong is still an error."""
    store = RedisStore(Redis.from_url(redis_url), prefix="test")
    raw = Redis.from_url(redis_url)
    try:
        await store.create_team(team("a", limits=Limits(requests_per_minute=5)))
        await store.create_key(key("k1", limits=Limits(tokens_per_day=9)))
        for name in ("{test}:team:a", "{test}:key:k1"):
            record = orjson.loads(await raw.get(name))
            record["from_the_future"] = {"x": 1}
            record["limits"]["future_limit_per_minute"] = 3
            await raw.set(name, orjson.dumps(record), keepttl=True)
        assert (await store.get_team("a")).limits == Limits(requests_per_minute=5)
        found = await store.find_key(hash_key("gk-k1"))
        assert found is not None and found.key.limits == Limits(tokens_per_day=9)
        assert [k.id for k in await store.list_keys("a")] == ["k1"]
        await raw.set("{test}:team:a", orjson.dumps({"id": "a", "models": 7}))
        with pytest.raises(ValidationError):
            await store.get_team("a")
    finally:
        await raw.aclose()
        await store.close()


async def test_redis_find_key_is_one_round_trip(redis_url: str) -> None:
    sent: list[bytes] = []

    class Counting(Connection):
        async def send_packed_command(self, command, check_health: bool = True) -> None:
            sent.append(command)
            await super().send_packed_command(command, check_health)

    client = Redis(connection_pool=ConnectionPool.from_url(redis_url, connection_class=Counting))
    store = RedisStore(client, prefix="test")
    raw = Redis.from_url(redis_url)
    try:
        await with_teams(store, "a", "b")
        await store.create_key(key("k1", teams=("a", "b")))
        await store.find_key(hash_key("gk-k1"))  # connects and loads the script once
        before = (await raw.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
        sent.clear()

        found = await store.find_key(hash_key("gk-k1"))

        assert found is not None and [t.id for t in found[1]] == ["a", "b"]
        assert len(sent) == 1, sent  # one request written...
        after = (await raw.info("commandstats"))["cmdstat_evalsha"]["calls"]
        assert after == before + 1  # ...and it was one script call on the server
        sent.clear()
        assert await store.find_key(hash_key("gk-unknown")) is None
        assert len(sent) == 1
    finally:
        await raw.aclose()
        await store.close()


async def every_kind_of_write(store: Store) -> None:
    """Teams and keys made, rotated, updated, used, revoked and deleted: every key the
    store writes, once (keys k1, k2 remain)."""
    await with_teams(store, "a", "b")
    await store.put_team(team("c"))
    await store.create_key(key("k1", teams=("a", "b")))
    await store.put_key(key("k2", teams=("c",)))
    await store.rotate_key("k1", hash_key("gk-new"), "gk-new", grace_seconds=60, at=1.0)
    await store.update_key("k2", {"teams": ["a"], "default_team": "a"})
    await store.record_last_used({"k1": 1.0})
    await store.revoke_key("k2", at=2.0)
    await store.delete_team("c")


async def test_redis_every_key_is_under_the_prefix_hash_tag(redis_url: str) -> None:
    store = RedisStore(Redis.from_url(redis_url), prefix="tag")
    try:
        await every_kind_of_write(store)
    finally:
        await store.close()
    raw = Redis.from_url(redis_url)
    names = sorted([name.decode() async for name in raw.scan_iter(count=1000)])
    ttl = await raw.pttl("{tag}:keyhash:" + hash_key("gk-k1"))
    await raw.aclose()
    assert names and all(name.startswith("{tag}:") for name in names), names
    assert {"{tag}:teams", "{tag}:keys", "{tag}:key-used", "{tag}:key:k1", "{tag}:team:a"} <= set(names)
    assert 0 < ttl <= 60_000  # the rotated-out hash expires by itself


async def test_redis_stores_with_different_prefixes_do_not_see_each_other(redis_url: str) -> None:
    one = RedisStore(Redis.from_url(redis_url), prefix="one")
    two = RedisStore(Redis.from_url(redis_url), prefix="two")
    try:
        async with contextlib.aclosing(await subscribed(two)) as feed:
            await with_teams(one, "a")
            await one.create_key(key("k1"))
            await one.put_team(team("a"))  # announced on one's channel only
            assert await two.get_team("a") is None
            assert await two.list_teams() == []
            assert await two.list_keys() == []
            assert await two.find_key(hash_key("gk-k1")) is None
            await with_teams(two, "a")  # the same ids do not clash
            await two.create_key(key("k1"))
            await two.put_team(team("a", name="two's"))
            assert await next_message(feed) == "key:k1"
            assert await next_message(feed) == "team:a"
            assert (await two.get_team("a")).name == "two's"
            assert (await one.get_team("a")).name == "Team a"
    finally:
        await one.close()
        await two.close()


async def test_redis_feed_ends_when_the_server_dies_and_works_after_a_restart() -> None:
    with RedisServer() as server:
        store = RedisStore.from_config(RedisStoreConfig(type="redis", url=server.url, prefix="test"))
        try:
            await with_teams(store, "a")
            feed = await subscribed(store)
            server.kill()
            with pytest.raises(StopAsyncIteration):
                await next_message(feed)

            server.start()
            async with contextlib.aclosing(await subscribed(store)) as feed:
                # Nothing survives (no persistence); the same client reconnects.
                await with_teams(store, "a")
                await store.update_team("a", {"name": "x"})
                assert await next_message(feed) == "team:a"
        finally:
            await store.close()


async def test_redis_feed_cancelled_while_it_subscribes_ends_at_once(redis_url: str) -> None:
    """A gateway stopped right after it started waited up to twice the feed's keepalive:
    redis-py swallowed the cancellation that arrived while the subscription connected.
    The cancellation lands at many points of the subscription here; each must end it."""
    for step in range(40):
        store = RedisStore(Redis.from_url(redis_url), prefix="test")
        try:

            async def follow(feed: AsyncIterator[str]) -> None:
                async for _ in feed:
                    pass

            task = asyncio.ensure_future(follow(store.invalidations()))
            await asyncio.sleep(step / 10000)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=5.0)
            assert done, f"the feed did not end when cancelled {step / 10:.1f} ms into its subscription"
        finally:
            await store.close()


async def test_redis_feed_ends_when_the_server_hangs() -> None:
    with RedisServer() as server:
        store = RedisStore(Redis.from_url(server.url), prefix="test", keepalive=0.2)
        try:
            feed = await subscribed(store)
            server.pause()
            try:
                with pytest.raises(StopAsyncIteration):
                    await next_message(feed)  # a ping unanswered within the keepalive
            finally:
                server.resume()
        finally:
            await store.close()


# ---------------------------------------------------------------- Redis Cluster only


def cluster_store(url: str, prefix: str = "test") -> RedisStore:
    return RedisStore.from_config(RedisStoreConfig(type="redis", mode="cluster", url=url, prefix=prefix))


async def test_cluster_every_key_is_in_the_slot_of_the_prefix(
    cluster_url: str, redis_cluster: LocalRedisCluster
) -> None:
    """Transactions and FIND_KEY touch any of these names together: one slot, one master.
    The URL names the first node; `{tag}` lives on another, so every write was routed."""
    home = redis_cluster.node_of("{tag}:")
    assert home != 0
    store = cluster_store(cluster_url, prefix="tag")
    try:
        await every_kind_of_write(store)
        assert [k.id for k in await store.list_keys()] == ["k1", "k2"]
        for node in range(3):  # a master that restarted or took over has no scripts
            redis_cluster.command(node, "SCRIPT", "FLUSH")
        assert (await store.find_key(hash_key("gk-new")))[0].id == "k1"
    finally:
        await store.close()
    names = redis_cluster.keys(home)
    assert {"{tag}:teams", "{tag}:keys", "{tag}:key-used", "{tag}:key:k1", "{tag}:team:a"} <= set(names)
    assert {redis_cluster.keyslot(name) for name in names} == {redis_cluster.keyslot("{tag}:")}
    assert all(redis_cluster.keys(node) == [] for node in range(3) if node != home)


async def test_cluster_feed_hears_changes_from_another_process(cluster_url: str) -> None:
    """Two stores (two gateway processes), each with its own cluster client."""
    one, two = cluster_store(cluster_url), cluster_store(cluster_url)
    try:
        async with contextlib.aclosing(await subscribed(two)) as feed:
            await with_teams(one, "a")
            await one.create_key(key("k1"))
            await one.revoke_key("k1", at=1.0)
            assert await next_message(feed) == "key:k1"
            assert (await two.find_key(hash_key("gk-k1")))[0].revoked_at == 1.0
    finally:
        await one.close()
        await two.close()


async def test_cluster_store_follows_its_slot_to_another_master(
    cluster_url: str, redis_cluster: LocalRedisCluster
) -> None:
    """A resharding moves the store's slot after its clients read the slot map: a
    transaction then meets MOVED on the old master and runs again on the new one; reads,
    scripts and the change feed carry on."""
    slot = redis_cluster.keyslot("{moving}:")
    home = redis_cluster.node_of("{moving}:")
    store = cluster_store(cluster_url, prefix="moving")
    try:
        await with_teams(store, "a")
        await store.create_key(key("k1"))
        async with contextlib.aclosing(await subscribed(store)) as feed:
            redis_cluster.move_slot(slot, (home + 1) % 3)
            assert (await store.update_key("k1", {"name": "moved"})).name == "moved"
            assert await next_message(feed) == "key:k1"
            assert (await store.get_key("k1")).name == "moved"
            assert (await store.find_key(hash_key("gk-k1")))[0].name == "moved"
            await store.create_team(team("b"))
            assert [t.id for t in await store.list_teams()] == ["a", "b"]
        assert redis_cluster.keys(home) == []
    finally:
        await store.close()
        redis_cluster.move_slot(slot, home)


async def test_cluster_ping_asks_every_master(cluster_url: str, redis_cluster: LocalRedisCluster) -> None:
    store = cluster_store(cluster_url)
    try:
        before = [redis_cluster.command(node, "INFO", "commandstats") for node in range(3)]
        await store.ping()
        after = [redis_cluster.command(node, "INFO", "commandstats") for node in range(3)]
    finally:
        await store.close()
    assert all(_calls(a, "ping") > _calls(b, "ping") for a, b in zip(after, before, strict=True))


def _calls(commandstats: str, command: str) -> int:
    for line in commandstats.splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


async def test_cluster_that_cannot_be_reached_is_unavailable() -> None:
    """redis-py raises RedisClusterException (no RedisError) when no node answers: still a
    529 `StoreUnavailable`, never a 500."""
    store = cluster_store(f"redis://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(StoreUnavailable):
            await store.get_team("a")
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(Exception):  # noqa: B017 - the feed's own loop retries whatever it is
            await anext(store.invalidations())
    finally:
        await store.close()
