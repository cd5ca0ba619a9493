"""The store: where teams and keys live, behind one interface with two implementations.

- `RedisStore` (`store/redis.py`): production; every gateway process and machine shares it.
- `MemoryStore` (`store/memory.py`): the embedded default for the quick start; one process.

One contract suite (`tests/contract/test_store.py`) runs against both, so they cannot drift.

Rules every implementation keeps:
- Records are immutable values (`Team`, `ApiKey`); a change writes a new record.
- A key is found by the SHA-256 of the raw key (`find_key`), in one round trip, with its
  teams. A rotated key's previous hash keeps finding it until its grace period ends, and
  says when that is (`FoundKey.hash_expires_at`), so a cache can stop it on time.
- Every change to a key or a team publishes an invalidation, so each process's auth
  cache drops what it holds (`invalidations`): a change can take a credential or a
  permission away, and a new key must not stay refused by a cache of unknown keys.
- Unknown ids raise `NotFound`; a clash (an id already taken, a team still in use) raises
  `Conflict`; a reference to a team that does not exist raises `InvalidRequest`.
- Keys are never deleted, only revoked: a revoked key keeps its record and its hash, so
  `find_key` can still tell the caller "revoked" rather than "unknown".

The pure rules both implementations share (which fields a change may touch, what `put_key`
keeps of a stored record) are the functions at the end of this module, so they cannot drift.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, NamedTuple, Protocol

from pydantic import BaseModel, ValidationError

from gateway.errors import InvalidRequest
from gateway.identity import ApiKey, Team
from gateway.redis.observer import Observer

# What an invalidation says: "key:<id>", "team:<id>", or ALL when everything may be stale.
ALL = "*"


class FoundKey(NamedTuple):
    """What `find_key` finds: the key's record and its teams that exist."""

    key: ApiKey
    teams: list[Team]
    # Unix seconds when the hash looked up stops finding the key: a rotated-out hash's
    # end of grace; None for the key's current hash.
    hash_expires_at: float | None = None


class Store(Protocol):
    kind: str  # "memory" or "redis"
    # Told of each operation on Redis (`redis/observer.py`); None until the app sets it.
    observer: Observer | None

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Return once the store answers (readiness: `/readyz`, under a timeout); raise
        as any operation would when it cannot. The memory store is this process: it
        answers at once."""

    # ---------------------------------------------------------------- teams
    async def create_team(self, team: Team) -> Team:
        """Add a new team; `Conflict` if the id is taken."""

    async def put_team(self, team: Team) -> Team:
        """Create or replace (the YAML bootstrap: the file is the source of truth for the
        teams it declares)."""

    async def get_team(self, team_id: str) -> Team | None: ...

    async def list_teams(self) -> list[Team]:
        """Every team, ordered by id."""

    async def update_team(self, team_id: str, changes: Mapping[str, Any]) -> Team:
        """Apply `changes` (field → new value, already validated; name, models, limits,
        metadata); `NotFound` if absent; `InvalidRequest` for any other field."""

    async def delete_team(self, team_id: str) -> None:
        """`NotFound` if absent; `Conflict` while a key that is not revoked belongs to it."""

    # ---------------------------------------------------------------- keys
    async def create_key(self, key: ApiKey) -> ApiKey:
        """Store a new key record (its hash already computed); `Conflict` if the id or the
        hash is taken; `InvalidRequest` if one of its teams does not exist. Announced like
        a change: a process may hold the hash in its cache of unknown keys."""

    async def put_key(self, key: ApiKey) -> ApiKey:
        """Create, or update a YAML-declared key in place (`merge_put_key`): the declared
        fields are replaced, the hash included (a new value replaces the old one at once,
        which no longer finds the key: a rotation without grace). Never un-revokes: a key
        revoked through the admin API stays revoked when the file is loaded again. Keeps
        the stored creation time and `expires_at` (the file declares none; the admin API
        sets it). `Conflict` if another key holds the hash; `InvalidRequest` as for
        `create_key`."""

    async def get_key(self, key_id: str) -> ApiKey | None: ...

    async def list_keys(self, team: str | None = None) -> list[ApiKey]:
        """Every key (revoked ones too), or the keys of one team; ordered by creation time."""

    async def update_key(self, key_id: str, changes: Mapping[str, Any]) -> ApiKey:
        """Apply `changes` (name, description, teams, default_team, models, limits, expires_at);
        `NotFound`; `InvalidRequest` for any other field, an unknown team, or a default team
        that is not one of the key's teams."""

    async def revoke_key(self, key_id: str, at: float) -> ApiKey:
        """Mark revoked at `at`. `find_key` still finds the key (by its current hash, and by
        a previous one still in its grace period), with `revoked_at` set, so the caller
        can answer "revoked" rather than "invalid". Idempotent: revoking again keeps the
        first time and publishes nothing. `NotFound`."""

    async def rotate_key(self, key_id: str, new_hash: str, new_prefix: str, grace_seconds: float, at: float) -> ApiKey:
        """Give the key a new hash; the previous one still finds it for `grace_seconds`
        from now (0: at once no more). `NotFound`; `InvalidRequest` if the key is revoked;
        `Conflict` if the new hash is taken."""

    async def find_key(self, key_hash: str) -> FoundKey | None:
        """The hot path's one round trip on a cache miss: the key a hash belongs to (current
        or within its grace period, and until when) and its teams. Returns revoked and
        expired keys too; the caller decides (and says why). Teams that no longer exist
        are left out."""

    async def record_last_used(self, used: Mapping[str, float]) -> None:
        """Batched last-used times (key id → Unix seconds), written off the request path;
        records read back carry them as `last_used_at` (the last write wins)."""

    # ---------------------------------------------------------------- change feed
    def invalidations(self) -> AsyncIterator[str]:
        """Messages saying what changed (see ALL). The first message is always ALL, yielded
        once the subscription is live: whatever changed while nobody listened is unknown,
        and from then on no change goes unheard (a test can wait for it before changing
        anything). The iterator ending, or raising, means messages may have been lost:
        the subscriber must drop its whole cache, and may call `invalidations()` again."""


# ---------------------------------------------------------------- shared rules

TEAM_CHANGES = frozenset({"name", "models", "limits", "metadata"})
KEY_CHANGES = frozenset({"name", "description", "teams", "default_team", "models", "limits", "expires_at"})


def changed_team(team: Team, changes: Mapping[str, Any]) -> Team:
    return _changed(team, changes, TEAM_CHANGES)


def changed_key(key: ApiKey, changes: Mapping[str, Any]) -> ApiKey:
    new = _changed(key, changes, KEY_CHANGES)
    check_default_team(new)
    return new


def check_default_team(key: ApiKey) -> None:
    if key.default_team not in key.teams:
        raise InvalidRequest(f"default_team '{key.default_team}' is not one of the key's teams {list(key.teams)}")


def missing_teams_error(missing: list[str]) -> InvalidRequest:
    names = ", ".join(f"'{team}'" for team in missing)
    return InvalidRequest(f"no such team: {names}" if len(missing) == 1 else f"no such teams: {names}")


def merge_put_key(existing: ApiKey | None, declared: ApiKey) -> ApiKey:
    """What `put_key` stores: the declared record, keeping what is not the file's to say
    (the stored creation time, a revocation, an expiry set through the admin API). A new
    hash is a rotation at the declared `rotated_at`; the same hash keeps the stored one."""
    if existing is None:
        return declared.model_copy(update={"last_used_at": None})
    kept: dict[str, Any] = {"created_at": existing.created_at, "expires_at": existing.expires_at, "last_used_at": None}
    if existing.revoked_at is not None:
        kept["revoked_at"] = existing.revoked_at
    if existing.hash == declared.hash or declared.rotated_at is None:
        kept["rotated_at"] = existing.rotated_at
    return declared.model_copy(update=kept)


def _changed(record: Any, changes: Mapping[str, Any], allowed: frozenset[str]) -> Any:
    refused = sorted(set(changes) - allowed)
    if refused:
        raise InvalidRequest(f"cannot change {', '.join(refused)} (only {', '.join(sorted(allowed))})")
    # Validated again as a whole so a list becomes a tuple and a dict a `Limits`, exactly
    # as a record read back from the store would be.
    model: type[BaseModel] = type(record)
    try:
        return model.model_validate({**record.model_dump(), **changes})
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidRequest(f"{where}: {first['msg']}") from None
