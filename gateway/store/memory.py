"""The embedded store: dicts in one process, for the quick start and for tests.

Every method runs to completion without awaiting, so on one event loop each call is
atomic, as a Redis transaction is. Records are frozen; a team's `metadata` dict is the
one mutable part, so teams are copied in and out (a caller editing what it got back
must not edit the store).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.identity import ApiKey, Team
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

# Messages a subscriber may leave unread before it is cut off (its iterator ends, which
# tells it to drop its whole cache): a stalled reader must not make the store grow.
SUBSCRIBER_BACKLOG = 1000


class MemoryStore:
    kind = "memory"

    def __init__(self) -> None:
        self._teams: dict[str, Team] = {}
        self._keys: dict[str, ApiKey] = {}
        # hash → (key id, expiry in Unix seconds, or None for a key's current hash).
        self._hashes: dict[str, tuple[str, float | None]] = {}
        self._used: dict[str, float] = {}
        # One queue per live `invalidations()` iterator; None in a queue ends it.
        self._subscribers: set[asyncio.Queue[str | None]] = set()
        # Never told anything: nothing here makes a round trip.
        self.observer: Observer | None = None

    async def close(self) -> None:
        for queue in list(self._subscribers):
            self._cut_off(queue)

    async def ping(self) -> None:
        """Nothing to reach: the store answers while the process does."""

    # ---------------------------------------------------------------- teams
    async def create_team(self, team: Team) -> Team:
        if team.id in self._teams:
            raise Conflict(f"team '{team.id}' already exists")
        self._teams[team.id] = team.model_copy(deep=True)
        return team.model_copy(deep=True)

    async def put_team(self, team: Team) -> Team:
        self._teams[team.id] = team.model_copy(deep=True)
        self._publish(f"team:{team.id}")
        return team.model_copy(deep=True)

    async def get_team(self, team_id: str) -> Team | None:
        team = self._teams.get(team_id)
        return team.model_copy(deep=True) if team is not None else None

    async def list_teams(self) -> list[Team]:
        return [self._teams[team_id].model_copy(deep=True) for team_id in sorted(self._teams)]

    async def update_team(self, team_id: str, changes: Mapping[str, Any]) -> Team:
        team = self._teams.get(team_id)
        if team is None:
            raise NotFound(f"no team '{team_id}'")
        new = changed_team(team, changes)
        self._teams[team_id] = new
        self._publish(f"team:{team_id}")
        return new.model_copy(deep=True)

    async def delete_team(self, team_id: str) -> None:
        if team_id not in self._teams:
            raise NotFound(f"no team '{team_id}'")
        live = sorted(key.id for key in self._keys.values() if team_id in key.teams and key.revoked_at is None)
        if live:
            raise Conflict(f"team '{team_id}' still has keys that are not revoked: {', '.join(live)}")
        del self._teams[team_id]
        self._publish(f"team:{team_id}")

    # ---------------------------------------------------------------- keys
    async def create_key(self, key: ApiKey) -> ApiKey:
        check_default_team(key)
        if key.id in self._keys:
            raise Conflict(f"key '{key.id}' already exists")
        if self._owner(key.hash) is not None:
            raise Conflict("another key already has this hash")
        self._check_teams(key)
        record = key.model_copy(update={"last_used_at": None})
        self._keys[key.id] = record
        self._hashes[key.hash] = (key.id, None)
        self._publish(f"key:{key.id}")
        return self._read(record)

    async def put_key(self, key: ApiKey) -> ApiKey:
        check_default_team(key)
        existing = self._keys.get(key.id)
        record = merge_put_key(existing, key)
        owner = self._owner(record.hash)
        if owner is not None and owner != key.id:
            raise Conflict("another key already has this hash")
        self._check_teams(record)
        if existing is not None and existing.hash != record.hash:
            self._hashes.pop(existing.hash, None)
        self._keys[key.id] = record
        self._hashes[record.hash] = (key.id, None)
        self._publish(f"key:{key.id}")
        return self._read(record)

    async def get_key(self, key_id: str) -> ApiKey | None:
        key = self._keys.get(key_id)
        return self._read(key) if key is not None else None

    async def list_keys(self, team: str | None = None) -> list[ApiKey]:
        keys = [key for key in self._keys.values() if team is None or team in key.teams]
        # (created_at, id): the order Redis's sorted set gives, ties included.
        keys.sort(key=lambda key: (key.created_at, key.id))
        return [self._read(key) for key in keys]

    async def update_key(self, key_id: str, changes: Mapping[str, Any]) -> ApiKey:
        new = changed_key(self._existing(key_id), changes)
        self._check_teams(new)
        self._keys[key_id] = new
        self._publish(f"key:{key_id}")
        return self._read(new)

    async def revoke_key(self, key_id: str, at: float) -> ApiKey:
        key = self._existing(key_id)
        if key.revoked_at is None:
            key = self._keys[key_id] = key.model_copy(update={"revoked_at": at})
            self._publish(f"key:{key_id}")
        return self._read(key)

    async def rotate_key(self, key_id: str, new_hash: str, new_prefix: str, grace_seconds: float, at: float) -> ApiKey:
        key = self._existing(key_id)
        if key.revoked_at is not None:
            raise InvalidRequest(f"key '{key_id}' is revoked; a revoked key cannot be rotated")
        if self._owner(new_hash) is not None:
            raise Conflict("another key already has this hash")
        now = time.time()
        # Rotations are rare: a good moment to forget the hashes whose grace has ended.
        for old, (_, expires) in list(self._hashes.items()):
            if expires is not None and expires <= now:
                del self._hashes[old]
        if grace_seconds > 0:
            self._hashes[key.hash] = (key_id, now + grace_seconds)
        else:
            self._hashes.pop(key.hash, None)
        self._hashes[new_hash] = (key_id, None)
        new = self._keys[key_id] = key.model_copy(update={"hash": new_hash, "prefix": new_prefix, "rotated_at": at})
        self._publish(f"key:{key_id}")
        return self._read(new)

    async def find_key(self, key_hash: str) -> FoundKey | None:
        key_id = self._owner(key_hash)
        if key_id is None:
            return None
        key = self._keys[key_id]
        teams = [self._teams[team].model_copy(deep=True) for team in key.teams if team in self._teams]
        return FoundKey(self._read(key), teams, self._hashes[key_hash][1])

    async def record_last_used(self, used: Mapping[str, float]) -> None:
        self._used.update(used)

    # ---------------------------------------------------------------- change feed
    async def invalidations(self) -> AsyncIterator[str]:
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=SUBSCRIBER_BACKLOG)
        self._subscribers.add(queue)
        try:
            yield ALL
            while (message := await queue.get()) is not None:
                yield message
        finally:
            self._subscribers.discard(queue)

    # ---------------------------------------------------------------- helpers
    def _publish(self, message: str) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                self._cut_off(queue)

    def _cut_off(self, queue: asyncio.Queue[str | None]) -> None:
        """End one subscriber's iterator at its next read (what it missed is unknown)."""
        self._subscribers.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)

    def _owner(self, key_hash: str) -> str | None:
        """The id of the key a hash finds now (a rotated-out hash until its grace ends)."""
        entry = self._hashes.get(key_hash)
        if entry is None:
            return None
        key_id, expires = entry
        if expires is not None and expires <= time.time():
            del self._hashes[key_hash]
            return None
        return key_id

    def _existing(self, key_id: str) -> ApiKey:
        key = self._keys.get(key_id)
        if key is None:
            raise NotFound(f"no key '{key_id}'")
        return key

    def _check_teams(self, key: ApiKey) -> None:
        missing = [team for team in key.teams if team not in self._teams]
        if missing:
            raise missing_teams_error(missing)

    def _read(self, key: ApiKey) -> ApiKey:
        return key.model_copy(update={"last_used_at": self._used.get(key.id)})
