"""Teams and keys as operators manage them: the operations the admin API and the CLI share.

No HTTP and no printing here: `admin/handlers.py` and `cli/accounts.py` call these and
present the result. Every operation validates what the store cannot (a default team that
is one of the key's teams, a key's teams existing) and raises the gateway's own errors
(`InvalidRequest`, `NotFound`, `Conflict`), so both front ends answer alike.

A key is made here and leaves only once, in `create_key`'s or `rotate_key`'s return
value; the store keeps its SHA-256 and first characters. `key_view` is the one shape
shown to operators, and it holds neither.

Usage is read from the limiter, which records it at each settlement (`usage_report`);
keys appear there by id only.

Teams and keys the YAML declares are the file's (`managed_by: config`; `bootstrap` writes
them at every load). The operations here refuse to change what the file declares (409
`Conflict`, naming the file): the next load would silently put it back. What the file
does not declare stays the operators': a key's `expires_at` and its revocation.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import typing
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any, Literal

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
from gateway.config import ConfigError, KeyBootstrap, TeamBootstrap
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.identity import (
    CONFIG,
    ApiKey,
    Limits,
    Team,
    hash_key,
    key_id_for_hash,
    new_key,
    new_key_id,
    now,
    shown_prefix,
)
from gateway.limiter import Limiter
from gateway.limiter.rules import MAX_USAGE_DAYS, USAGE_FIELDS
from gateway.store.base import Store

log = logging.getLogger("gateway")

Clock = Callable[[], float]

# What the admin API may still change on a key the file declares: the file has no such field.
OPERATOR_KEY_FIELDS = frozenset({"expires_at"})


def _declared(what: str, source: str | None, advice: str) -> Conflict:
    """The refusal to change what the configuration file declares (`source`: its path)."""
    return Conflict(f"{what} is declared in {source or 'the configuration file'}: {advice}")


def _fields(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


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


async def update_team(store: Store, team_id: str, spec: TeamUpdate, *, source: str | None = None) -> Team:
    """`source`: the configuration file, named when it owns the team (409)."""
    current = await get_team(store, team_id)
    sent = spec.model_fields_set
    if sent and current.managed_by == CONFIG:
        raise _declared(
            f"team '{team_id}'",
            source,
            f"change {_fields(sent)} there and reload (the next load would undo a change made here)",
        )
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


async def delete_team(store: Store, team_id: str, *, source: str | None = None) -> None:
    if (await get_team(store, team_id)).managed_by == CONFIG:
        raise _declared(f"team '{team_id}'", source, "remove it there and reload (the next load would bring it back)")
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


async def update_key(store: Store, key_id: str, spec: KeyUpdate, *, source: str | None = None) -> ApiKey:
    """`source`: the configuration file, named when it owns a field sent (409)."""
    current = await get_key(store, key_id)
    sent = spec.model_fields_set
    owned = sent - OPERATOR_KEY_FIELDS
    if owned and current.declared_in_config():
        raise _declared(
            f"key '{key_id}'",
            source,
            f"change {_fields(owned)} there and reload (the next load would undo a change made here; "
            f"only {_fields(OPERATOR_KEY_FIELDS)} is set here)",
        )
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


async def rotate_key(
    store: Store, key_id: str, grace_seconds: float, *, clock: Clock = now, source: str | None = None
) -> tuple[ApiKey, str]:
    """A new key for the same record; the previous one keeps working for `grace_seconds`.
    Not for a key the file declares: its value is the file's (put the new one there)."""
    current = await get_key(store, key_id)
    if current.declared_in_config():
        raise _declared(
            f"key '{key_id}'",
            source,
            "its value comes from there: put the new value there and reload (the previous one stops at once), "
            "or revoke the key here",
        )
    if current.revoked_at is not None:
        raise InvalidRequest(f"key '{key_id}' is revoked; a revoked key cannot be rotated")
    raw = new_key()
    record = await store.rotate_key(key_id, hash_key(raw), shown_prefix(raw), grace_seconds, clock())
    return record, raw


def key_status(key: ApiKey, at: float) -> Literal["active", "revoked", "expired"]:
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
        managed_by=CONFIG if key.declared_in_config() else None,
    ).model_dump(mode="json")


def team_view(team: Team) -> dict:
    return TeamView(
        id=team.id,
        name=team.name,
        models=list(team.models),
        limits=team.limits,
        metadata=dict(team.metadata),
        created_at=team.created_at,
        managed_by=team.managed_by,
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


@dataclasses.dataclass(frozen=True, slots=True)
class _DeclaredKey:
    """One key of the file and the stored record it is (None: a new one)."""

    where: str  # its path in the file, for errors
    team: TeamBootstrap
    spec: KeyBootstrap
    digest: str
    record: ApiKey | None = None

    @property
    def replaces(self) -> bool:
        """The record holds another value, which the declared one replaces."""
        return self.record is not None and self.record.hash != self.digest


async def bootstrap(store: Store, teams: Sequence[TeamBootstrap], *, clock: Clock = now) -> None:
    """Make the store hold what the YAML declares, at every load (start, SIGHUP, `POST
    /admin/reload`; each process of a deployment may run it at once: every step is
    idempotent). The file is the source of truth for what it declares, and only that:

    - Each team is written as declared (`managed_by: config`). A team the file no longer
      declares is handed to the admin API, not deleted: its usage stays readable and the
      keys made for it through the API keep working.
    - Each key is the stored record holding its value, else the file's live key of the
      same team and name (a new value under a known name replaces the old one at once:
      a rotation without grace, the same id), else a new record. Its declared fields are
      written; its expiry and revocation, which the file does not declare, are kept.
    - A key the file declared before and no longer does is revoked.

    Keys and teams made through the admin API are never touched. Every problem is found
    before anything is written (`ConfigError`, naming the entry)."""
    await _check_also_teams(store, teams)
    stored = await store.list_keys()
    plan = await _plan_keys(store, teams, stored)
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
                managed_by=CONFIG,
            )
        )
    for declared in plan:
        await store.put_key(_declared_record(declared, at))
        if declared.record is not None and declared.replaces:  # (`replaces` says the same; mypy cannot see it)
            log.info(
                "key '%s' (%s): replaced by the value the file declares; the previous one stops now",
                declared.record.id,
                declared.where,
            )
    kept = {declared.record.id for declared in plan if declared.record is not None}
    for key in stored:
        if key.declared_in_config() and key.revoked_at is None and key.id not in kept:
            await store.revoke_key(key.id, at)
            log.info(
                "key '%s' (%s of team '%s'): revoked, the file no longer declares it",
                key.id,
                key.name or "unnamed",
                key.default_team,
            )
    await _release_teams(store, {spec.id for spec in teams})


async def _check_also_teams(store: Store, teams: Sequence[TeamBootstrap]) -> None:
    declared = {team.id for team in teams}
    for i, spec in enumerate(teams):
        for j, key in enumerate(spec.keys):
            for k, other in enumerate(key.also_teams):
                if other not in declared and await store.get_team(other) is None:
                    raise ConfigError([f"teams[{i}].keys[{j}].also_teams[{k}]: unknown team '{other}'"])


async def _plan_keys(store: Store, teams: Sequence[TeamBootstrap], stored: Sequence[ApiKey]) -> list[_DeclaredKey]:
    """Which stored record each declared key is: by value first, for every key (so values
    that swap names keep their records), then by team and name, then by the id a new
    record of that value would take (it may hold one of an earlier load)."""
    declared = [
        _DeclaredKey(f"teams[{i}].keys[{j}].key", team, spec, hash_key(spec.key.get_secret_value()))
        for i, team in enumerate(teams)
        for j, spec in enumerate(team.keys)
    ]
    plan, previous_of = await _match_values(store, declared, {key.id: key for key in stored})
    return _match_names(plan, previous_of, stored)


async def _match_values(
    store: Store, declared: list[_DeclaredKey], by_id: dict[str, ApiKey]
) -> tuple[list[_DeclaredKey], dict[str, str]]:
    """Each declared key with the record whose current value it is; and, for a value that
    is a rotated-out one still in its grace, the id of the key it was (digest → id)."""
    plan, previous_of = [], {}
    for item in declared:
        found = await store.find_key(item.digest)
        if found is not None and found.key.hash == item.digest:
            item = dataclasses.replace(item, record=by_id.get(found.key.id, found.key))
        elif found is not None:
            previous_of[item.digest] = found.key.id
        plan.append(item)
    return plan, previous_of


def _match_names(plan: list[_DeclaredKey], previous_of: dict[str, str], stored: Sequence[ApiKey]) -> list[_DeclaredKey]:
    """The keys no record holds the value of: the file's live key of the same team and
    name (a new value for it), else the record a new one would overwrite, if it is the
    file's; `ConfigError` for a value that would bring back one a rotation retired."""
    by_id = {key.id: key for key in stored}
    taken = {item.record.id for item in plan if item.record is not None}
    by_name: dict[tuple[str, str], ApiKey] = {}
    for key in stored:  # in creation order: of two same-named records (an earlier version allowed it), the first
        if key.declared_in_config() and key.revoked_at is None and key.name and key.id not in taken:
            by_name.setdefault((key.default_team, key.name), key)
    matched, problems = [], []
    for item in plan:
        record = item.record
        if record is None and item.spec.name:
            record = by_name.pop((item.team.id, item.spec.name), None)
        if record is None:
            record = by_id.get(key_id_for_hash(item.digest))
            if record is not None and (record.id in taken or not record.declared_in_config()):
                problems.append(
                    f"{item.where}: this value was key '{record.id}''s until a rotation replaced it; "
                    "declare that key's current value, or a new one"
                )
                continue
        owner = previous_of.get(item.digest)
        if owner is not None and (record is None or record.id != owner):
            problems.append(
                f"{item.where}: this value is the previous one of key '{owner}', in its grace period after a "
                "rotation; declare another value"
            )
            continue
        if record is not None:
            taken.add(record.id)
        matched.append(dataclasses.replace(item, record=record))
    if problems:
        raise ConfigError(problems)
    return matched


def _declared_record(declared: _DeclaredKey, at: float) -> ApiKey:
    """What `put_key` is given for a key of the file (it keeps what is not the file's)."""
    spec, raw = declared.spec, declared.spec.key.get_secret_value()
    return ApiKey(
        id=declared.record.id if declared.record is not None else key_id_for_hash(declared.digest),
        name=spec.name,
        description=spec.description,
        prefix=shown_prefix(raw),
        hash=declared.digest,
        teams=tuple(dict.fromkeys([declared.team.id, *spec.also_teams])),
        default_team=declared.team.id,
        models=tuple(spec.models) if spec.models is not None else None,
        limits=spec.limits,
        created_at=at,  # the store keeps the first one (`merge_put_key`)
        rotated_at=at if declared.replaces else None,
        managed_by=CONFIG,
    )


async def _release_teams(store: Store, declared: set[str]) -> None:
    """Teams the file declared before and no longer does become the admin API's."""
    for team in await store.list_teams():
        if team.managed_by == CONFIG and team.id not in declared:
            await store.put_team(team.model_copy(update={"managed_by": None}))
            log.warning(
                "team '%s': no longer declared in the file; kept, and now managed through the admin API "
                "(delete it there if it should go)",
                team.id,
            )
