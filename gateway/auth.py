"""A request's credential → the `Principal` it runs as, from a short local cache.

The store is asked only on a cache miss (one round trip). Every process keeps its own
cache, and drops it whole when the store's change feed says something changed, so a
revoked key stops working everywhere within the feed's latency; `cache_ttl` bounds how
stale an entry can be if a message is lost. What the store cannot change behind the
cache's back, a key's expiry and the end of a rotated-out key's grace, is checked
against the clock on every request, cached or not, and while the store is down.

Nothing reaches the store for a credential that cannot be a key (too long, not printable
ASCII), nor, for `negative_cache_ttl`, for one the store just said it does not know: a
flood of bad keys costs a hash each, not a Redis round trip. Keys' last-used times are
collected here and written in one batch off the request path.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace

from gateway.errors import AuthenticationFailed, PermissionDenied, StoreUnavailable
from gateway.identity import KEY_FORMAT, ApiKey, Principal, Team, hash_key, well_formed_key
from gateway.store.base import FoundKey, Store

TEAM_HEADER = "x-team-id"
# Enough for every live key of a large deployment; a flood of distinct bad keys is not
# cached here (only in the bounded `UnknownKeys`), so this only bounds the good ones.
MAX_CACHED_KEYS = 50_000


def credential(headers: Mapping[str, str]) -> str | None:
    """The key from `x-api-key` or `Authorization: Bearer` (x-api-key wins if both are sent)."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


@dataclass(slots=True)
class _Entry:
    deadline: float  # monotonic
    key: ApiKey
    teams: dict[str, Team]
    principals: dict[str, Principal]
    # Unix seconds: when the hash looked up stops finding the key (a rotated-out key's
    # end of grace), whatever the cache's deadline; None for the key's current hash.
    hash_expires_at: float | None


class UnknownKeys:
    """Hashes the store said it does not know, each for `ttl` seconds, at most `size` of
    them (the least recently seen go first), so asking with one again costs no lookup."""

    def __init__(self, size: int, ttl: float) -> None:
        self._size = size
        self._ttl = ttl
        self._deadlines: OrderedDict[str, float] = OrderedDict()  # hash → monotonic deadline

    def __contains__(self, digest: str) -> bool:
        deadline = self._deadlines.get(digest)
        if deadline is None:
            return False
        if deadline <= time.monotonic():
            del self._deadlines[digest]
            return False
        self._deadlines.move_to_end(digest)
        return True

    def __len__(self) -> int:
        return len(self._deadlines)

    def add(self, digest: str) -> None:
        if self._size == 0 or self._ttl == 0:
            return
        self._deadlines[digest] = time.monotonic() + self._ttl
        self._deadlines.move_to_end(digest)
        while len(self._deadlines) > self._size:
            self._deadlines.popitem(last=False)

    def clear(self) -> None:
        self._deadlines.clear()


class Authenticator:
    def __init__(
        self,
        store: Store,
        *,
        cache_ttl: float,
        serve_stale: bool = False,
        negative_cache_ttl: float = 5.0,
        negative_cache_size: int = 4096,
    ) -> None:
        """`serve_stale`: while the store cannot be reached, keep accepting the keys this
        process already knew (the `fail_open` policy); otherwise answer 529."""
        self._store = store
        self._ttl = cache_ttl
        self._serve_stale = serve_stale
        self._cache: dict[str, _Entry] = {}
        self._unknown = UnknownKeys(negative_cache_size, negative_cache_ttl)
        # Bumped by every invalidation: a lookup that was under way meanwhile may have read
        # the store before the change, so what it found is used once but not cached.
        self._generation = 0
        self._used: dict[str, float] = {}

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        raw = credential(headers)
        if not raw:
            raise AuthenticationFailed("missing API key: send it as `x-api-key` or `Authorization: Bearer`")
        if not well_formed_key(raw):
            raise AuthenticationFailed(f"invalid API key: a key is {KEY_FORMAT}")
        digest = hash_key(raw)
        entry = self._cache.get(digest)
        if entry is None or entry.deadline < time.monotonic():
            entry = await self._load(digest)
        now = time.time()
        _check_usable(entry, now)
        key = entry.key
        team_id = headers.get(TEAM_HEADER) or key.default_team
        principal = entry.principals.get(team_id)
        if principal is None:
            if team_id not in key.teams:
                raise PermissionDenied(f"this API key is not a member of team '{team_id}'")
            team = entry.teams.get(team_id)
            if team is None:
                raise PermissionDenied(f"team '{team_id}' no longer exists")
            principal = entry.principals[team_id] = Principal(key=key, team=team)
        self._used[key.id] = now
        return principal

    async def _load(self, digest: str) -> _Entry:
        if digest in self._unknown:
            raise AuthenticationFailed("invalid API key")
        generation = self._generation
        try:
            found = await self._store.find_key(digest)
        except StoreUnavailable:
            stale = self._cache.get(digest)
            if self._serve_stale and stale is not None:
                return stale
            raise
        fresh = generation == self._generation
        if found is None:
            self._cache.pop(digest, None)
            if fresh:
                self._unknown.add(digest)
            raise AuthenticationFailed("invalid API key")
        entry = _entry(found, time.monotonic() + self._ttl)
        if fresh or self._serve_stale:
            if len(self._cache) >= MAX_CACHED_KEYS:
                self._cache.clear()
            # A lookup that raced an invalidation is kept expired, as an invalidated entry
            # is: never trusted again, but what an outage may fall back on.
            self._cache[digest] = entry if fresh else replace(entry, deadline=0.0)
        return entry

    def invalidate(self, message: str = "*") -> None:
        """Something changed in the store: nothing cached may be trusted any more (changes
        are rare; precision would buy nothing but risk). Entries are kept, expired, only as
        the `serve_stale` fallback for an outage."""
        self.forget_unknown()
        if not self._serve_stale:
            self._cache.clear()
            return
        for entry in self._cache.values():
            entry.deadline = 0.0

    def forget_unknown(self) -> None:
        """Keys were added (this process wrote them): the hashes it learnt were unknown may
        be known now. The change feed says so too, a moment later; this is at once."""
        self._generation += 1
        self._unknown.clear()

    async def flush_last_used(self) -> None:
        if not self._used:
            return
        used, self._used = self._used, {}
        await self._store.record_last_used(used)


def _entry(found: FoundKey, deadline: float) -> _Entry:
    return _Entry(deadline, found.key, {team.id: team for team in found.teams}, {}, found.hash_expires_at)


def _check_usable(entry: _Entry, now: float) -> None:
    """Against the clock, on every request: a cached entry (or a stale one, served while
    the store is down) must not outlive the key's expiry or the end of its grace."""
    key = entry.key
    if key.revoked_at is not None:
        raise AuthenticationFailed("this API key has been revoked")
    if entry.hash_expires_at is not None and now >= entry.hash_expires_at:
        raise AuthenticationFailed("this API key was replaced by a rotation and its grace period is over")
    if key.expires_at is not None and now >= key.expires_at:
        raise AuthenticationFailed("this API key has expired")
