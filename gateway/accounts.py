"""Teams and keys as operators manage them: the operations the admin API and the CLI share.

No HTTP and no printing here: `admin/handlers.py` and `cli_accounts.py` call these and
present the result. Every operation validates what the store cannot (a default team that
is one of the key's teams, a key's teams existing) and raises the gateway's own errors
(`InvalidRequest`, `NotFound`, `Conflict`), so both front ends answer alike.

A key is made here and leaves only once, in `create_key`'s or `rotate_key`'s return
value; the store keeps its SHA-256 and first characters. `key_view` is the one shape
shown to operators, and it holds neither.

Usage is read from the limiter, which records it at each settlement (`usage_report`);
keys appear there by id only.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from gateway.admin.models import (
    KeyCreate,
    KeyUpdate,
    KeyView,
    LimitsInput,
    TeamCreate,
    TeamUpdate,
    TeamView,
    UsageGroup,
    UsageReport,
    limits_from,
)
from gateway.config import ConfigError, TeamBootstrap
from gateway.errors import InvalidRequest, NotFound
from gateway.identity import ApiKey, Limits, Team, hash_key, key_id_for_hash, new_key, new_key_id, now, shown_prefix
from gateway.limiter import Limiter
from gateway.limiter.rules import MAX_USAGE_DAYS, USAGE_FIELDS
from gateway.store.base import Store

Clock = Callable[[], float]


# ---------------------------------------------------------------------------- teams


async def create_team(store: Store, spec: TeamCreate, *, clock: Clock = now) -> Team:
    team = Team(
        id=spec.id,
        name=spec.name,
        models=tuple(spec.models),
        limits=limits_from(spec.limits),
        metadata=dict(spec.metadata),
        created_at=clock(),
    )
    return await store.create_team(team)


async def get_team(store: Store, team_id: str) -> Team:
    team = await store.get_team(team_id)
    if team is None:
        raise NotFound(f"no team '{team_id}'")
    return team


async def list_teams(store: Store) -> list[Team]:
    return await store.list_teams()


async def update_team(store: Store, team_id: str, spec: TeamUpdate) -> Team:
    current = await get_team(store, team_id)
    sent = spec.model_fields_set
    changes: dict[str, Any] = {}
    if "name" in sent:
        changes["name"] = spec.name
    if "models" in sent:
        changes["models"] = tuple(spec.models)
    if "limits" in sent:
        changes["limits"] = limits_from(spec.limits, base=current.limits)
    if "metadata" in sent:
        changes["metadata"] = dict(spec.metadata)
    if not changes:
        return current
    return await store.update_team(team_id, changes)


async def delete_team(store: Store, team_id: str) -> None:
    await store.delete_team(team_id)


# ---------------------------------------------------------------------------- keys


async def _check_teams(store: Store, teams: Sequence[str], default_team: str) -> None:
    """What the store would refuse with a vaguer message, named by field."""
    if default_team not in teams:
        raise InvalidRequest(f"default_team: '{default_team}' is not one of the key's teams ({', '.join(teams)})")
    for i, team_id in enumerate(teams):
        if await store.get_team(team_id) is None:
            raise InvalidRequest(f"teams[{i}]: no team '{team_id}'")


async def create_key(
    store: Store,
    teams: Sequence[str],
    default_team: str | None = None,
    name: str = "",
    description: str = "",
    models: Sequence[str] | None = None,
    limits: Limits | LimitsInput | None = None,
    expires_at: float | None = None,
    *,
    clock: Clock = now,
) -> tuple[ApiKey, str]:
    """A new key: its record and the key itself, which is never stored nor shown again."""
    teams = tuple(dict.fromkeys(teams))  # the same team twice is once
    if not teams:
        raise InvalidRequest("teams: a key belongs to at least one team")
    default_team = default_team or teams[0]
    await _check_teams(store, teams, default_team)
    at = clock()
    if expires_at is not None and expires_at <= at:
        raise InvalidRequest("expires_at: must be in the future")
    raw = new_key()
    record = ApiKey(
        id=new_key_id(),
        name=name,
        description=description,
        prefix=shown_prefix(raw),
        hash=hash_key(raw),
        teams=teams,
        default_team=default_team,
        models=tuple(models) if models is not None else None,
        limits=limits if isinstance(limits, Limits) else limits_from(limits),
        expires_at=expires_at,
        created_at=at,
    )
    return await store.create_key(record), raw


async def create_key_from(store: Store, spec: KeyCreate, *, clock: Clock = now) -> tuple[ApiKey, str]:
    return await create_key(
        store,
        spec.teams,
        default_team=spec.default_team,
        name=spec.name,
        description=spec.description,
        models=spec.models,
        limits=spec.limits,
        expires_at=spec.expires_at,
        clock=clock,
    )


async def get_key(store: Store, key_id: str) -> ApiKey:
    key = await store.get_key(key_id)
    if key is None:
        raise NotFound(f"no key '{key_id}'")
    return key


async def list_keys(store: Store, team: str | None = None) -> list[ApiKey]:
    if team is not None:
        await get_team(store, team)  # an unknown team is a mistake, not an empty list
    return await store.list_keys(team)


async def update_key(store: Store, key_id: str, spec: KeyUpdate) -> ApiKey:
    current = await get_key(store, key_id)
    sent = spec.model_fields_set
    changes: dict[str, Any] = {}
    for field in ("name", "description", "expires_at"):
        if field in sent:
            changes[field] = getattr(spec, field)
    if "models" in sent:
        changes["models"] = tuple(spec.models) if spec.models is not None else None
    if "limits" in sent:
        changes["limits"] = limits_from(spec.limits, base=current.limits)
    if "teams" in sent or "default_team" in sent:
        teams = tuple(dict.fromkeys(spec.teams)) if "teams" in sent else current.teams
        if "default_team" in sent:
            default_team = spec.default_team
        else:  # the default follows along when its team is taken away
            default_team = current.default_team if current.default_team in teams else teams[0]
        await _check_teams(store, teams, default_team)
        changes["teams"], changes["default_team"] = teams, default_team
    if not changes:
        return current
    return await store.update_key(key_id, changes)


async def revoke_key(store: Store, key_id: str, *, clock: Clock = now) -> ApiKey:
    """Idempotent: revoking a revoked key keeps its first revocation time."""
    current = await get_key(store, key_id)
    if current.revoked_at is not None:
        return current
    return await store.revoke_key(key_id, clock())


async def rotate_key(store: Store, key_id: str, grace_seconds: float, *, clock: Clock = now) -> tuple[ApiKey, str]:
    """A new key for the same record; the previous one keeps working for `grace_seconds`."""
    current = await get_key(store, key_id)
    if current.revoked_at is not None:
        raise InvalidRequest(f"key '{key_id}' is revoked; a revoked key cannot be rotated")
    raw = new_key()
    record = await store.rotate_key(key_id, hash_key(raw), shown_prefix(raw), grace_seconds, clock())
    return record, raw


def key_status(key: ApiKey, at: float) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and at >= key.expires_at:
        return "expired"
    return "active"


def key_view(key: ApiKey, *, at: float | None = None) -> dict:
    """The key as operators see it: never its hash, never the key."""
    return KeyView(
        id=key.id,
        name=key.name,
        description=key.description,
        prefix=key.prefix,
        teams=list(key.teams),
        default_team=key.default_team,
        models=list(key.models) if key.models is not None else None,
        limits=key.limits,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        created_at=key.created_at,
        rotated_at=key.rotated_at,
        last_used_at=key.last_used_at,
        status=key_status(key, now() if at is None else at),
    ).model_dump(mode="json")


def team_view(team: Team) -> dict:
    return TeamView(
        id=team.id,
        name=team.name,
        models=list(team.models),
        limits=team.limits,
        metadata=dict(team.metadata),
        created_at=team.created_at,
    ).model_dump(mode="json")


# ---------------------------------------------------------------------------- usage

USAGE_GROUPS: tuple[str, ...] = typing.get_args(UsageGroup)
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _day(parameter: str, value: str) -> date:
    # Only `YYYY-MM-DD`: `date.fromisoformat` also takes `20250601` and week dates.
    if _DAY.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise InvalidRequest(f"{parameter}: expected a day as YYYY-MM-DD (UTC), got {value!r}")


def _summed(rows: Sequence[dict], by: str | None) -> list[dict]:
    """The limiter's rows (per day, key and model), or their sums per `by`, sorted by it."""
    if by is None:
        return [{name: row[name] for name in ("day", "key", "model", *USAGE_FIELDS)} for row in rows]
    sums: dict[str, dict] = {}
    for row in rows:
        into = sums.setdefault(row[by], {by: row[by], **dict.fromkeys(USAGE_FIELDS, 0)})
        for field in USAGE_FIELDS:
            into[field] += row[field]
    return [sums[name] for name in sorted(sums)]


def _rounded(row: dict) -> dict:
    # Costs are float sums (Redis's HINCRBYFLOAT, then ours): to a billionth of a dollar,
    # so reports do not show 0.30000000000000004.
    return {**row, "cost": round(float(row["cost"]), 9)}


async def usage_report(
    limiter: Limiter,
    team: str,
    since: str | None = None,
    until: str | None = None,
    by: str | None = None,
    *,
    store: Store,
    clock: Clock = now,
) -> dict:
    """A team's recorded usage from `since` to `until` (days `YYYY-MM-DD`, UTC, inclusive;
    `until` defaults to today, `since` to `until`): rows per day, key (by id) and model,
    or summed `by` one of those, and the totals. Bad input is an `InvalidRequest` naming
    the parameter; an unknown team is `NotFound` (the store says which teams exist: the
    limiter only knows teams that have used something)."""
    if not team:
        raise InvalidRequest("team: required (the id of the team whose usage to read)")
    if by is not None and by not in USAGE_GROUPS:
        raise InvalidRequest(f"by: expected one of {', '.join(USAGE_GROUPS)}, got {by!r}")
    last = _day("until", until) if until is not None else datetime.fromtimestamp(clock(), UTC).date()
    first = _day("since", since) if since is not None else last
    if first > last:
        raise InvalidRequest(f"since: {first.isoformat()} is after until ({last.isoformat()})")
    span = (last - first).days + 1
    if span > MAX_USAGE_DAYS:
        raise InvalidRequest(
            f"since: {first.isoformat()} to {last.isoformat()} is {span} days; a report covers at most {MAX_USAGE_DAYS}"
        )
    await get_team(store, team)
    rows = await limiter.usage(team, first.isoformat(), last.isoformat())
    totals = {field: sum(row[field] for row in rows) for field in USAGE_FIELDS}
    return UsageReport.model_validate(
        {
            "team": team,
            "since": first.isoformat(),
            "until": last.isoformat(),
            "by": by,
            "rows": [_rounded(row) for row in _summed(rows, by)],
            "totals": _rounded(totals),
        }
    ).model_dump(mode="json", exclude_unset=True)


# ---------------------------------------------------------------------------- bootstrap


async def bootstrap(store: Store, teams: Sequence[TeamBootstrap], *, clock: Clock = now) -> None:
    """Write the teams and keys the YAML declares. The file is the source of truth for
    what it declares: each team is replaced, each key updated in place (same id, derived
    from its hash, on every start and every machine). A key revoked through the admin API
    stays revoked (the store's `put_key` never un-revokes)."""
    declared = {team.id for team in teams}
    for i, spec in enumerate(teams):
        for j, key in enumerate(spec.keys):
            for k, other in enumerate(key.also_teams):
                if other not in declared and await store.get_team(other) is None:
                    raise ConfigError([f"teams[{i}].keys[{j}].also_teams[{k}]: unknown team '{other}'"])
    at = clock()
    for spec in teams:
        existing = await store.get_team(spec.id)
        await store.put_team(
            Team(
                id=spec.id,
                name=spec.name,
                models=tuple(spec.models),
                limits=spec.limits,
                metadata=dict(spec.metadata),
                created_at=existing.created_at if existing else at,
            )
        )
    for spec in teams:
        for key in spec.keys:
            raw = key.key.get_secret_value()
            digest = hash_key(raw)
            await store.put_key(
                ApiKey(
                    id=key_id_for_hash(digest),
                    name=key.name,
                    description=key.description,
                    prefix=shown_prefix(raw),
                    hash=digest,
                    teams=tuple(dict.fromkeys([spec.id, *key.also_teams])),
                    default_team=spec.id,
                    models=tuple(key.models) if key.models is not None else None,
                    limits=key.limits,
                    created_at=at,  # the store keeps the first one (`merge_put_key`)
                )
            )
