"""`gateway/auth.py` on the memory store (counted, or held mid-lookup, by subclasses of the
real class): what never reaches the store, the bounded cache of unknown keys, and lookups
that race a change (the integration tests, on Redis, are test_key_lookups.py,
test_rotation_grace.py and test_revocation.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.auth import Authenticator, UnknownKeys
from gateway.errors import AuthenticationFailed, StoreUnavailable
from gateway.identity import ApiKey, Team, hash_key, shown_prefix, well_formed_key
from gateway.store.base import FoundKey
from gateway.store.memory import MemoryStore


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    async def find_key(self, key_hash: str) -> FoundKey | None:
        self.lookups += 1
        return await super().find_key(key_hash)


class HeldStore(MemoryStore):
    """Each lookup reads the store, then waits for `release` before answering: what a
    lookup whose answer is on the wire while something changes looks like."""

    def __init__(self) -> None:
        super().__init__()
        self.read = asyncio.Event()
        self.release = asyncio.Event()

    async def find_key(self, key_hash: str) -> FoundKey | None:
        found = await super().find_key(key_hash)
        self.read.set()
        await self.release.wait()
        return found


def record(raw: str, key_id: str = "key_1") -> ApiKey:
    return ApiKey(
        id=key_id, prefix=shown_prefix(raw), hash=hash_key(raw), teams=("t",), default_team="t", created_at=time.time()
    )


def asking(raw: str) -> dict[str, str]:
    return {"x-api-key": raw}


@pytest.mark.parametrize(
    "value",
    ["k" * 257, "with space", "tab\tinside", "nul\x00inside", "del\x7f", "é-accented", "\u202e-bidi"],
    ids=["too-long", "space", "tab", "nul", "del", "non-ascii", "bidi-control"],
)
async def test_a_credential_that_cannot_be_a_key_is_refused_without_a_lookup(value):
    assert not well_formed_key(value)
    store = CountingStore()
    auth = Authenticator(store, cache_ttl=10)
    with pytest.raises(AuthenticationFailed, match="printable ASCII"):
        await auth.authenticate(asking(value))
    assert store.lookups == 0


def test_the_widest_key_is_well_formed():
    assert well_formed_key("k" * 256) and well_formed_key("!#$%&'()*+,-./0-9:;<=>?@A-Z[]^_`a-z{|}~")


async def test_an_unknown_key_is_looked_up_once_until_a_key_is_added():
    store = CountingStore()
    await store.create_team(Team(id="t"))
    auth = Authenticator(store, cache_ttl=10, negative_cache_ttl=3600)
    for _ in range(5):
        with pytest.raises(AuthenticationFailed, match="invalid API key"):
            await auth.authenticate(asking("will-exist-0001"))
    assert store.lookups == 1
    await store.create_key(record("will-exist-0001"))
    auth.forget_unknown()  # what the admin API and a reload do in their own process
    assert (await auth.authenticate(asking("will-exist-0001"))).key_id == "key_1"


async def test_the_cache_of_unknown_keys_is_bounded_and_forgets_the_least_recent():
    unknown = UnknownKeys(size=2, ttl=3600)
    unknown.add("a")
    unknown.add("b")
    assert "a" in unknown  # seen again: now the most recent
    unknown.add("c")
    assert ("a" in unknown, "b" in unknown, "c" in unknown, len(unknown)) == (True, False, True, 2)
    off = UnknownKeys(size=0, ttl=3600)
    off.add("a")
    assert "a" not in off


async def test_an_unknown_key_is_looked_up_again_after_its_ttl():
    unknown = UnknownKeys(size=10, ttl=0.05)
    unknown.add("a")
    deadline = time.monotonic() + 5
    while "a" in unknown:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_a_lookup_under_way_while_a_key_is_revoked_is_not_cached():
    """The lookup read the key before the revocation and answered after it (and after the
    change feed's message): caching that answer would let the revoked key work for
    `cache_ttl`."""
    store = HeldStore()
    await store.create_team(Team(id="t"))
    await store.create_key(record("revoked-soon-01"))
    auth = Authenticator(store, cache_ttl=3600)
    first = asyncio.ensure_future(auth.authenticate(asking("revoked-soon-01")))
    await store.read.wait()
    await store.revoke_key("key_1", time.time())
    auth.invalidate("key:key_1")
    store.release.set()
    assert (await first).key_id == "key_1"  # it started before the revocation
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await auth.authenticate(asking("revoked-soon-01"))


async def test_a_lookup_under_way_while_the_key_is_created_is_not_cached_as_unknown():
    store = HeldStore()
    await store.create_team(Team(id="t"))
    auth = Authenticator(store, cache_ttl=3600, negative_cache_ttl=3600)
    first = asyncio.ensure_future(auth.authenticate(asking("created-soon-01")))
    await store.read.wait()
    await store.create_key(record("created-soon-01"))
    auth.invalidate("key:key_1")
    store.release.set()
    with pytest.raises(AuthenticationFailed, match="invalid API key"):
        await first
    assert (await auth.authenticate(asking("created-soon-01"))).key_id == "key_1"


class FlakyStore(HeldStore):
    """A held store that can be made unreachable, as a Redis outage makes it."""

    down = False

    async def find_key(self, key_hash: str) -> FoundKey | None:
        if self.down:
            raise StoreUnavailable("the key store cannot be reached (ConnectionError)")
        return await super().find_key(key_hash)


async def test_under_fail_open_a_lookup_that_raced_a_change_is_still_an_outage_s_fallback():
    """The raced answer is not trusted again (the next request looks the key up anew), but
    when the store then goes away the key is served from it, as an invalidated entry
    would be: the change feed's first messages at start raced the first request, and
    the gateway's first outage refused every key it had just served."""
    store = FlakyStore()
    await store.create_team(Team(id="t"))
    await store.create_key(record("raced-at-start-1"))
    auth = Authenticator(store, cache_ttl=3600, serve_stale=True)
    first = asyncio.ensure_future(auth.authenticate(asking("raced-at-start-1")))
    await store.read.wait()
    auth.invalidate("team:another")
    store.release.set()
    assert (await first).key_id == "key_1"
    store.down = True
    assert (await auth.authenticate(asking("raced-at-start-1"))).key_id == "key_1"
    store.down = False
    store.read.clear()
    assert (await auth.authenticate(asking("raced-at-start-1"))).key_id == "key_1"
    assert store.read.is_set()  # looked up again: the raced answer was never trusted


async def test_without_fail_open_a_raced_lookup_leaves_nothing_for_an_outage():
    store = FlakyStore()
    await store.create_team(Team(id="t"))
    await store.create_key(record("raced-at-start-2"))
    auth = Authenticator(store, cache_ttl=3600)
    first = asyncio.ensure_future(auth.authenticate(asking("raced-at-start-2")))
    await store.read.wait()
    auth.invalidate("team:another")
    store.release.set()
    await first
    store.down = True
    with pytest.raises(StoreUnavailable):
        await auth.authenticate(asking("raced-at-start-2"))
