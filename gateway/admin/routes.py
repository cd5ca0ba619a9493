"""Every path of the admin API, in one table: it mounts the handlers and draws the
OpenAPI document (`admin/openapi.py`)."""

from __future__ import annotations

from gateway.admin import handlers as h
from gateway.admin.models import (
    Deleted,
    Health,
    KeyCreate,
    KeyList,
    KeyRotate,
    KeyUpdate,
    KeyView,
    NewKey,
    Reloaded,
    RotatedKey,
    TeamCreate,
    TeamList,
    TeamUpdate,
    TeamView,
    UsageReport,
)
from gateway.admin.openapi import Route

ROUTES: tuple[Route, ...] = (
    Route("POST", "/teams", h.create_team, "createTeam", "create a team", TeamCreate, answer=TeamView, status=201,
          errors=(409,)),
    Route("GET", "/teams", h.list_teams, "listTeams", "every team", answer=TeamList),
    Route("GET", "/teams/{team_id}", h.get_team, "getTeam", "one team", answer=TeamView),
    Route("PATCH", "/teams/{team_id}", h.update_team, "updateTeam",
          "change a team (409 for a team the configuration file declares)", TeamUpdate, answer=TeamView,
          errors=(409,)),
    Route("DELETE", "/teams/{team_id}", h.delete_team, "deleteTeam",
          "delete a team that no active key uses and the configuration file does not declare",
          answer=Deleted, errors=(409,)),
    Route("POST", "/keys", h.create_key, "createKey", "create a key: the answer is the only time `key` appears",
          KeyCreate, answer=NewKey, status=201, errors=(409,)),
    Route("GET", "/keys", h.list_keys, "listKeys", "every key, or one team's", answer=KeyList,
          query={"team": "only the keys of this team"}, errors=(404,)),
    Route("GET", "/keys/{key_id}", h.get_key, "getKey", "one key", answer=KeyView),
    Route("PATCH", "/keys/{key_id}", h.update_key, "updateKey",
          "change a key (only `expires_at` of a key the configuration file declares; else 409)", KeyUpdate,
          answer=KeyView, errors=(409,)),
    Route("POST", "/keys/{key_id}/revoke", h.revoke_key, "revokeKey", "revoke a key, at once everywhere (idempotent)",
          answer=KeyView),
    Route("POST", "/keys/{key_id}/rotate", h.rotate_key, "rotateKey",
          "a new key for the same record; the previous one works for `grace_seconds` more "
          "(409 for a key the configuration file declares: its value is the file's)",
          KeyRotate, body_required=False, answer=RotatedKey, errors=(409,)),
    Route("GET", "/usage", h.get_usage, "getUsage",
          "a team's recorded usage per day, key (by id) and model, or summed by one of them, with totals",
          answer=UsageReport, errors=(404,),
          query={"team": "the team's id (required; an unknown team is a 404)",
                 "since": "the first day, YYYY-MM-DD (UTC); default: `until`",
                 "until": "the last day, YYYY-MM-DD (UTC), inclusive; default: today; at most 400 days after `since`",
                 "by": "sum the rows by one dimension: day, key or model; default: per day, key and model"}),
    Route("GET", "/health", h.get_health, "getHealth", "every deployment's breaker state in this process", answer=Health),
    Route("POST", "/reload", h.reload_config, "reloadConfig",
          "reload the configuration file; a bad one is refused and the running one stays", body_required=False,
          answer=Reloaded, errors=(409,)),
    Route("GET", "/openapi.json", h.openapi_json, "openapi", "this document"),
)
