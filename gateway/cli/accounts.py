"""`gateway teams ...`, `gateway keys ...` and `gateway usage`: the operator's commands, run
against the configured store directly (no server needed), through the same `accounts`
operations and request models as the admin API, so both accept and refuse the same things.
`usage` reads the limiter's records through a limiter of its own, opened from the same
configuration as a server's.

`cli.py` parses the arguments; this module turns them into admin API bodies, runs the
operation and prints with `cli/output.py`. The memory store is refused: it lives inside one
server process, so a CLI process would only be changing a store of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from gateway import accounts
from gateway.admin.models import KeyCreate, KeyRotate, KeyUpdate, TeamCreate, TeamUpdate, describe
from gateway.cli import output as cli_output
from gateway.config import Config
from gateway.errors import GatewayError
from gateway.identity import Limits
from gateway.limiter import open_limiter
from gateway.store import Store, open_store

Body = TypeVar("Body", bound=BaseModel)  # an admin API request body

MEMORY_REFUSAL = (
    "the configured store is the in-memory one, which lives inside a single gateway process: "
    "a command run from here cannot reach it. Use the running gateway's admin API (/admin/, "
    "with `admin.token`), or configure a shared store: `store: {type: redis, url: ...}`."
)

# `--rpm 60`, and so on: flag → Limits field (the flag's `dest`; see `cli.py`).
LIMIT_FLAGS = {
    "--rpm": "requests_per_minute",
    "--input-tpm": "input_tokens_per_minute",
    "--output-tpm": "output_tokens_per_minute",
    "--concurrency": "concurrent_requests",
    "--tokens-per-day": "tokens_per_day",
    "--tokens-per-month": "tokens_per_month",
    "--cost-per-month": "cost_per_month_usd",
    "--count-tokens-rpm": "count_tokens_per_minute",
}
assert set(LIMIT_FLAGS.values()) == set(Limits.model_fields), "a Limits field has no CLI flag"

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass
class Outcome:
    payload: object  # what --json prints: the admin API's answer
    text: str  # what people read
    warning: str | None = None  # to stderr under --json, so stdout stays one JSON document


# ---------------------------------------------------------------------------- flag types


def count(value: str) -> int | None:
    """A limit: a whole number, or `none` to lift it."""
    if value.lower() in ("none", "unlimited"):
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'none', got {value!r}") from None


def amount(value: str) -> float | None:
    if value.lower() in ("none", "unlimited"):
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {value!r}") from None


def names(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def metadata_pair(value: str) -> tuple[str, str]:
    name, sep, text = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
    return name, text


def expiry(value: str) -> float | str | None:
    """Unix seconds, an RFC 3339 date-time (checked by the request model), or `never`."""
    if value.lower() in ("never", "none"):
        return None
    try:
        return float(value)
    except ValueError:
        return value


def duration(value: str) -> float:
    """`3600`, `90m`, `12h`, `30d`."""
    unit = _DURATION_UNITS.get(value[-1:].lower())
    try:
        return float(value[:-1]) * unit if unit else float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 3600, 90m, 12h or 30d, got {value!r}") from None


# ---------------------------------------------------------------------------- bodies


def _given(args: argparse.Namespace, *fields: str) -> dict:
    return {field: getattr(args, field) for field in fields if hasattr(args, field)}


def _common(args: argparse.Namespace) -> dict:
    body = _given(args, "name", "description", "models", "default_team")
    limits = _given(args, *LIMIT_FLAGS.values())
    if limits:
        body["limits"] = limits
    if hasattr(args, "metadata"):
        body["metadata"] = dict(args.metadata)
    if hasattr(args, "expires_in"):
        body["expires_at"] = time.time() + args.expires_in
    elif hasattr(args, "expires_at"):
        body["expires_at"] = args.expires_at
    return body


def _validated(model: type[Body], body: dict) -> Body:
    # Through JSON and in strict mode, exactly as the admin API validates its bodies.
    try:
        return model.model_validate_json(orjson.dumps(body), strict=True)
    except ValidationError as exc:
        message = describe(exc)
        for flag, field in LIMIT_FLAGS.items():  # name the flag that was typed
            message = message.replace(f"limits.{field}:", f"{flag}:")
        raise GatewayError(message) from None


# ---------------------------------------------------------------------------- commands


async def _teams(store: Store, args: argparse.Namespace) -> Outcome:
    action = args.action
    if action == "list":
        views = [accounts.team_view(team) for team in await accounts.list_teams(store)]
        return Outcome({"data": views}, cli_output.team_table(views))
    if action == "show":
        view = accounts.team_view(await accounts.get_team(store, args.id))
        return Outcome(view, cli_output.team_details(view))
    if action == "create":
        spec = _validated(TeamCreate, {"id": args.id, **_common(args)})
        view = accounts.team_view(await accounts.create_team(store, spec))
        return Outcome(view, f"created team {view['id']}\n{cli_output.team_details(view)}")
    if action == "update":
        changes = _validated(TeamUpdate, _common(args))
        view = accounts.team_view(await accounts.update_team(store, args.id, changes, source=args.config))
        return Outcome(view, f"updated team {view['id']}\n{cli_output.team_details(view)}")
    if action == "delete":
        await accounts.delete_team(store, args.id, source=args.config)
        return Outcome({"id": args.id, "deleted": True}, f"deleted team {args.id}")
    raise AssertionError(action)


async def _keys(store: Store, args: argparse.Namespace) -> Outcome:
    action = args.action
    if action == "list":
        views = [accounts.key_view(key) for key in await accounts.list_keys(store, args.team)]
        return Outcome({"data": views}, cli_output.key_table(views))
    if action == "show":
        view = accounts.key_view(await accounts.get_key(store, args.id))
        return Outcome(view, cli_output.key_details(view))
    if action == "create":
        teams = [team for group in args.team for team in group]
        spec = _validated(KeyCreate, {"teams": teams, **_common(args)})
        record, raw = await accounts.create_key_from(store, spec)
        view = accounts.key_view(record)
        return Outcome({**view, "key": raw}, cli_output.new_key(view, raw), cli_output.NEW_KEY_WARNING)
    if action == "update":
        key_changes = _validated(
            KeyUpdate, _common(args) | ({"teams": [t for g in args.team for t in g]} if args.team else {})
        )
        view = accounts.key_view(await accounts.update_key(store, args.id, key_changes, source=args.config))
        return Outcome(view, f"updated key {view['id']}\n{cli_output.key_details(view)}")
    if action == "revoke":
        view = accounts.key_view(await accounts.revoke_key(store, args.id))
        return Outcome(view, f"revoked key {view['id']} at {cli_output.when(view['revoked_at'])}")
    if action == "rotate":
        rotation = _validated(KeyRotate, {"grace_seconds": args.grace})
        record, raw = await accounts.rotate_key(store, args.id, rotation.grace_seconds, source=args.config)
        view = accounts.key_view(record)
        until = (record.rotated_at or time.time()) + rotation.grace_seconds
        payload = {**view, "key": raw, "previous_key_expires_at": until}
        return Outcome(payload, cli_output.new_key(view, raw, rotated_until=until), cli_output.NEW_KEY_WARNING)
    raise AssertionError(action)


async def _usage(store: Store, config: Config, args: argparse.Namespace) -> Outcome:
    limiter = open_limiter(config.store, config.limits)
    try:
        report = await accounts.usage_report(limiter, args.team, args.since, args.until, args.by, store=store)
    finally:
        await limiter.close()
    return Outcome(report, cli_output.usage_table(report))


async def _run(config: Config, args: argparse.Namespace) -> Outcome:
    store = open_store(config.store)
    try:
        if args.command == "usage":
            return await _usage(store, config, args)
        return await (_teams if args.command == "teams" else _keys)(store, args)
    finally:
        await store.close()


def main(config: Config, args: argparse.Namespace) -> int:
    """Run one `teams`/`keys`/`usage` command; the exit status."""
    where = " ".join(["gateway", args.command, *([args.action] if hasattr(args, "action") else [])])
    if config.store.type == "memory":
        print(f"{where}: {MEMORY_REFUSAL}", file=sys.stderr)
        return 1
    try:
        outcome = asyncio.run(_run(config, args))
    except GatewayError as exc:
        print(f"{where}: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:  # the store unreachable, most likely; no traceback for operators
        print(f"{where}: the store failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(cli_output.to_json(outcome.payload))
        if outcome.warning:
            print(outcome.warning, file=sys.stderr)
    else:
        print(outcome.text)
    return 0
