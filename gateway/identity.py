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
import time
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

KEY_PREFIX = "gk-"
SHOWN_PREFIX_LENGTH = len(KEY_PREFIX) + 6
TEAM_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# What a client may send as a key: printable ASCII without spaces, at most this long
# (a made key is 46). Checked before any lookup, so junk costs no store round trip.
MAX_KEY_LENGTH = 256
KEY_FORMAT = f"1 to {MAX_KEY_LENGTH} printable ASCII characters without spaces"

# Who owns a record: "config" for the teams and keys the YAML declares (each load of the
# file restores them as declared), None for those made through the admin API or the CLI.
ManagedBy = Literal["config"]
CONFIG: ManagedBy = "config"


# A team's `count_tokens_per_minute` when its limits set none (the gateway's
# `limits.default_count_tokens_per_minute`).
DEFAULT_COUNT_TOKENS_PER_MINUTE = 300


class Limits(BaseModel):
    """Every field optional; absent = unlimited (but a team's `count_tokens_per_minute`:
    the gateway's default). The same shape for teams and keys, in the YAML bootstrap, the
    admin API and the CLI."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: Annotated[int, Field(ge=0)] | None = None
    input_tokens_per_minute: Annotated[int, Field(ge=0)] | None = None
    output_tokens_per_minute: Annotated[int, Field(ge=0)] | None = None
    concurrent_requests: Annotated[int, Field(ge=0)] | None = None
    tokens_per_day: Annotated[int, Field(ge=0)] | None = None
    tokens_per_month: Annotated[int, Field(ge=0)] | None = None
    cost_per_month_usd: Annotated[float, Field(ge=0)] | None = None
    # `/v1/messages/count_tokens` requests, in a bucket of their own (never the messages'
    # `requests_per_minute`).
    count_tokens_per_minute: Annotated[int, Field(ge=0)] | None = None


class Team(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=TEAM_ID)]
    name: str = ""
    # Model names or wildcards (`claude-*`) the team may use; `["*"]` is every model.
    models: tuple[str, ...] = ("*",)
    limits: Limits = Field(default_factory=Limits)
    metadata: dict[str, str] = Field(default_factory=dict)
    created_at: float = 0.0
    managed_by: ManagedBy | None = None


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
    managed_by: ManagedBy | None = None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def declared_in_config(self) -> bool:
        """Whether the YAML owns this key. Records stored before ownership was recorded
        carry no marker; the YAML's were then named after their hash (`key_id_for_hash`),
        which a key made through the admin API never is (its id is random)."""
        return self.managed_by == CONFIG or (self.managed_by is None and self.id == key_id_for_hash(self.hash))


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


def well_formed_key(value: str) -> bool:
    # (String methods: faster than a regular expression, and this runs on every request.)
    return 0 < len(value) <= MAX_KEY_LENGTH and value.isascii() and value.isprintable() and " " not in value


def models_allow(patterns: tuple[str, ...] | None, *names: str) -> bool:
    """Whether any of `names` (those of one configured model: `routing.Plan.names`) matches."""
    if patterns is None or "*" in patterns:  # (every request of most teams: no pattern to match)
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
