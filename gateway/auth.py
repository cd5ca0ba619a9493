"""A request's credential → the `Principal` it runs as, from a short local cache.

The store is asked only on a cache miss (one round trip). Every process keeps its own
cache, and drops it whole when the store's change feed says something changed, so a
revoked key stops working everywhere within the feed's latency; `cache_ttl` bounds how
stale an entry can be if a message is lost. Keys' last-used times are collected here and
written in one batch off the request path.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import AuthenticationFailed, PermissionDenied, StoreUnavailable
from gateway.identity import ApiKey, Principal, Team, hash_key
from gateway.store.base import Store

TEAM_HEADER = "x-team-id"
# Enough for every live key of a large deployment; a flood of distinct bad keys is not
# cached at all, so this only bounds the good ones.
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


class Authenticator:
    def __init__(self, store: Store, *, cache_ttl: float, serve_stale: bool = False) -> None:
        """`serve_stale`: while the store cannot be reached, keep accepting the keys this
        process already knew (the `fail_open` policy); otherwise answer 529."""
        self._store = store
        self._ttl = cache_ttl
        self._serve_stale = serve_stale
        self._cache: dict[str, _Entry] = {}
        self._used: dict[str, float] = {}

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        raw = credential(headers)
        if not raw:
            raise AuthenticationFailed("missing API key: send it as `x-api-key` or `Authorization: Bearer`")
        digest = hash_key(raw)
        entry = self._cache.get(digest)
        if entry is None or entry.deadline < time.monotonic():
            entry = await self._load(digest)
        key = entry.key
        now = time.time()
        if key.revoked_at is not None:
            raise AuthenticationFailed("this API key has been revoked")
        if key.expires_at is not None and now >= key.expires_at:
            raise AuthenticationFailed("this API key has expired")
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
        try:
            found = await self._store.find_key(digest)
        except StoreUnavailable:
            stale = self._cache.get(digest)
            if self._serve_stale and stale is not None:
                return stale
            raise
        if found is None:
            self._cache.pop(digest, None)
            raise AuthenticationFailed("invalid API key")
        key, teams = found
        if len(self._cache) >= MAX_CACHED_KEYS:
            self._cache.clear()
        entry = _Entry(time.monotonic() + self._ttl, key, {team.id: team for team in teams}, {})
        self._cache[digest] = entry
        return entry

    def invalidate(self, message: str = "*") -> None:
        """Something changed in the store: nothing cached may be trusted any more (changes
        are rare; precision would buy nothing but risk). Entries are kept, expired, only as
        the `serve_stale` fallback for an outage."""
        if not self._serve_stale:
            self._cache.clear()
            return
        for entry in self._cache.values():
            entry.deadline = 0.0

    async def flush_last_used(self) -> None:
        if not self._used:
            return
        used, self._used = self._used, {}
        await self._store.record_last_used(used)
