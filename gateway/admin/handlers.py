"""Thin admin endpoints: validate the body, call `accounts`, answer with the view.

Failures are raised as gateway errors; the main app's `edge` middleware, which wraps the
admin sub-app's requests too, turns them into the usual error body.
"""

from __future__ import annotations

from typing import TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway import accounts
from gateway.admin.models import KeyCreate, KeyRotate, KeyUpdate, TeamCreate, TeamUpdate, describe
from gateway.admin.openapi import Route, document
from gateway.config import ConfigError
from gateway.errors import Conflict, GatewayError, InvalidRequest
from gateway.limiter import Limiter
from gateway.responses import JSON, json_response
from gateway.runtime import RUNTIME, reload
from gateway.store.base import Store

# The admin app's route table (`admin/routes.py`), and the OpenAPI document drawn from it,
# rendered once per mount prefix (see `openapi_json`).
ROUTE_TABLE: web.AppKey[tuple[Route, ...]] = web.AppKey("admin_routes", tuple)
OPENAPI: web.AppKey[dict[str, bytes]] = web.AppKey("admin_openapi", dict)

Body = TypeVar("Body", bound=BaseModel)


def store(request: web.Request) -> Store:
    # The parent app's runtime: the sub-app has no state of its own to drift from it.
    found = request.config_dict[RUNTIME].store
    if found is None:
        raise GatewayError("the store is not open yet")
    return found


def source(request: web.Request) -> str | None:
    """The configuration file, named when a change is refused because it owns the record."""
    return request.config_dict[RUNTIME].config_path


def forget_unknown(request: web.Request) -> None:
    """A key was added: this process stops refusing its hash from the cache of unknown ones
    at once (the others hear it through the store's change feed)."""
    auth = request.config_dict[RUNTIME].auth
    if auth is not None:
        auth.forget_unknown()


def limiter(request: web.Request) -> Limiter:
    admission = request.config_dict[RUNTIME].admission
    if admission is None:
        raise GatewayError("the limiter is not open yet")
    return admission.limiter


async def body(request: web.Request, model: type[Body]) -> Body:
    raw = await request.read()
    if raw and request.content_type != "application/json" and not request.content_type.endswith("+json"):
        raise InvalidRequest(f"Content-Type must be application/json, got {request.content_type or 'none'}")
    try:
        # Strict: what the OpenAPI document calls invalid is refused, not coerced.
        return model.model_validate_json(raw or b"{}", strict=True)
    except ValidationError as exc:
        raise InvalidRequest(describe(exc)) from None


# ---------------------------------------------------------------------------- teams


async def create_team(request: web.Request) -> web.Response:
    team = await accounts.create_team(store(request), await body(request, TeamCreate))
    return json_response(accounts.team_view(team), status=201)


async def list_teams(request: web.Request) -> web.Response:
    return json_response({"data": [accounts.team_view(team) for team in await accounts.list_teams(store(request))]})


async def get_team(request: web.Request) -> web.Response:
    return json_response(accounts.team_view(await accounts.get_team(store(request), request.match_info["team_id"])))


async def update_team(request: web.Request) -> web.Response:
    spec = await body(request, TeamUpdate)
    team = await accounts.update_team(store(request), request.match_info["team_id"], spec, source=source(request))
    return json_response(accounts.team_view(team))


async def delete_team(request: web.Request) -> web.Response:
    team_id = request.match_info["team_id"]
    await accounts.delete_team(store(request), team_id, source=source(request))
    return json_response({"id": team_id, "deleted": True})


# ---------------------------------------------------------------------------- keys


async def create_key(request: web.Request) -> web.Response:
    record, raw = await accounts.create_key_from(store(request), await body(request, KeyCreate))
    forget_unknown(request)
    return json_response({**accounts.key_view(record), "key": raw}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    keys = await accounts.list_keys(store(request), request.query.get("team") or None)
    return json_response({"data": [accounts.key_view(key) for key in keys]})


async def get_key(request: web.Request) -> web.Response:
    return json_response(accounts.key_view(await accounts.get_key(store(request), request.match_info["key_id"])))


async def update_key(request: web.Request) -> web.Response:
    spec = await body(request, KeyUpdate)
    key = await accounts.update_key(store(request), request.match_info["key_id"], spec, source=source(request))
    return json_response(accounts.key_view(key))


async def revoke_key(request: web.Request) -> web.Response:
    return json_response(accounts.key_view(await accounts.revoke_key(store(request), request.match_info["key_id"])))


async def rotate_key(request: web.Request) -> web.Response:
    spec = await body(request, KeyRotate)
    record, raw = await accounts.rotate_key(
        store(request), request.match_info["key_id"], spec.grace_seconds, source=source(request)
    )
    forget_unknown(request)
    rotated_at = record.rotated_at if record.rotated_at is not None else record.created_at
    return json_response(
        {**accounts.key_view(record), "key": raw, "previous_key_expires_at": rotated_at + spec.grace_seconds}
    )


# ---------------------------------------------------------------------------- usage


async def get_usage(request: web.Request) -> web.Response:
    query = request.query
    report = await accounts.usage_report(
        limiter(request),
        query.get("team", ""),
        query.get("since") or None,
        query.get("until") or None,
        query.get("by") or None,
        store=store(request),
    )
    return json_response(report)


# ---------------------------------------------------------------------------- operations


async def get_health(request: web.Request) -> web.Response:
    router = request.config_dict[RUNTIME].routes.router
    return json_response({"deployments": router.health()})


async def reload_config(request: web.Request) -> web.Response:
    runtime = request.config_dict[RUNTIME]
    if runtime.config_path is None:
        raise Conflict("this gateway was not started from a configuration file; there is nothing to reload")
    try:
        config = await reload(runtime, runtime.config_path)
    except ConfigError as exc:
        raise InvalidRequest(
            "the new configuration was refused; still serving the previous one: " + "; ".join(exc.problems)
        ) from None
    return json_response({"reloaded": True, "models": len(config.models), "backends": len(config.backends)})


# ---------------------------------------------------------------------------- document


async def openapi_json(request: web.Request) -> web.Response:
    # Paths in the document carry the prefix the app is mounted at, read off this very
    # request, so it is right wherever the main app mounts it.
    prefix = request.path[: -len("/openapi.json")]
    rendered = request.app[OPENAPI]
    if prefix not in rendered:
        rendered[prefix] = orjson.dumps(document(request.app[ROUTE_TABLE], prefix))
    return web.Response(body=rendered[prefix], content_type=JSON)  # encoded once, not per request
