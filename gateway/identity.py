"""Who is calling: teams, API keys, their limits, and the `Principal` a request runs as.

A key is shown once, when it is made: `gk-` and 43 URL-safe characters (32 random bytes).
Only its SHA-256 is stored (the key carries 256 bits of chance, so a plain hash is as
strong as a keyed one and needs no shared secret that could be lost). Listings show the
key's id, name and first characters (`prefix`), never the key.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import os
import re
import time
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

KEY_PREFIX = "gk-"
SHOWN_PREFIX_LENGTH = len(KEY_PREFIX) + 6
TEAM_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_TEAM_ID = re.compile(TEAM_ID)


class Limits(BaseModel):
    """Every field optional; absent = unlimited. The same shape for teams and keys, in the
    YAML bootstrap, the admin API and the CLI."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: Annotated[int, Field(ge=0)] | None = None
    input_tokens_per_minute: Annotated[int, Field(ge=0)] | None = None
    output_tokens_per_minute: Annotated[int, Field(ge=0)] | None = None
    concurrent_requests: Annotated[int, Field(ge=0)] | None = None
    tokens_per_day: Annotated[int, Field(ge=0)] | None = None
    tokens_per_month: Annotated[int, Field(ge=0)] | None = None
    cost_per_month_usd: Annotated[float, Field(ge=0)] | None = None


class Team(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=TEAM_ID)]
    name: str = ""
    # Model names or wildcards (`claude-*`) the team may use; `["*"]` is every model.
    models: tuple[str, ...] = ("*",)
    limits: Limits = Field(default_factory=Limits)
    metadata: dict[str, str] = Field(default_factory=dict)
    created_at: float = 0.0


class ApiKey(BaseModel):
    """A key's record; the key itself is never part of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str = ""
    description: str = ""
    prefix: str  # the first characters of the key, for people to recognise it
    hash: str  # SHA-256 hex of the current key
    teams: tuple[str, ...]
    default_team: str
    # Narrower than the team's; None = whatever the team may use.
    models: tuple[str, ...] | None = None
    limits: Limits = Field(default_factory=Limits)
    expires_at: float | None = None  # Unix seconds
    revoked_at: float | None = None
    created_at: float = 0.0
    rotated_at: float | None = None
    last_used_at: float | None = None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


def new_key() -> str:
    return KEY_PREFIX + base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key_id() -> str:
    return "key_" + os.urandom(8).hex()


def key_id_for_hash(key_hash: str) -> str:
    """The id of a key declared in the YAML: derived from its hash, so loading the same
    file again (or on another machine) finds the same record instead of adding one."""
    return "key_" + key_hash[:16]


def shown_prefix(key: str) -> str:
    return key[:SHOWN_PREFIX_LENGTH]


def valid_team_id(value: str) -> bool:
    return bool(_TEAM_ID.match(value))


def models_allow(patterns: tuple[str, ...] | None, *names: str) -> bool:
    """Whether any of `names` (the model asked for, the model it resolved to) matches."""
    if patterns is None:
        return True
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns for name in names)


@dataclass(frozen=True, slots=True)
class Principal:
    """The identity one request runs as: a key, and the one team it picked."""

    key: ApiKey
    team: Team

    @property
    def key_id(self) -> str:
        return self.key.id

    @property
    def team_id(self) -> str:
        return self.team.id

    def may_use(self, *names: str) -> bool:
        return models_allow(self.team.models, *names) and models_allow(self.key.models, *names)


def now() -> float:
    return time.time()
