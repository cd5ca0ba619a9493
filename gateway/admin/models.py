"""What the admin API and the CLI take in and give back, as pydantic models.

One set of models serves three readers: the admin handlers validate request bodies with
them, the CLI builds the same bodies from its flags (so both reject the same input with
the same field names), and `admin/openapi.py` publishes their JSON Schemas.

Request bodies are validated from the JSON bytes in strict mode: `"5"` is not a number
and `5.0` not an integer here, so what the OpenAPI document calls invalid is refused
(schemathesis checks that) instead of being quietly coerced.

PATCH bodies apply only the fields present; `limits` is merged field by field (send
`null` for a limit to lift it), every other field is replaced whole.
"""

from __future__ import annotations

import re
import typing
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, create_model
from pydantic.json_schema import JsonDict

from gateway.identity import TEAM_ID, Limits

# Integers beyond this do not survive a JSON round trip through every client (JavaScript
# numbers), nor serialisation with orjson (64 bits); no limit needs more.
MAX_COUNT = 2**53
# A rotated key's previous value stays valid at most this long (30 days): a grace period
# is for rolling a secret out, not a second key.
MAX_GRACE_SECONDS = 30 * 24 * 3600
MAX_TEXT = 1000
MAX_ITEMS = 256

TeamId = Annotated[str, Field(pattern=TEAM_ID)]
ModelPattern = Annotated[str, Field(min_length=1, max_length=200)]
ModelList = Annotated[list[ModelPattern], Field(max_length=MAX_ITEMS)]
Name = Annotated[str, Field(max_length=200)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Metadata = Annotated[dict[Annotated[str, Field(max_length=64)], Text], Field(max_length=64)]


# RFC 3339's `date-time`, which the OpenAPI document promises; Python's own ISO parser
# takes more (a bare date, say), and what the schema calls invalid must be refused.
_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
LATEST = 253402300799.0  # 9999-12-31T23:59:59Z


def _unix_seconds(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # a number, checked as one below
    match = _RFC3339.match(value)
    if match:
        day, clock, fraction, offset = match.groups()
        offset = "+00:00" if offset in ("Z", "z") else offset
        try:
            return datetime.fromisoformat(f"{day}T{clock}{(fraction or '')[:7]}{offset}").astimezone(UTC).timestamp()
        except ValueError:
            pass
    raise ValueError("expected Unix seconds or an RFC 3339 date-time (2030-01-31T00:00:00Z)")


# Unix seconds, or an RFC 3339 date-time; held as Unix seconds like the records.
Timestamp = Annotated[
    float,
    BeforeValidator(_unix_seconds),
    Field(ge=0, le=LATEST),
    WithJsonSchema(
        {"anyOf": [{"type": "number", "minimum": 0, "maximum": LATEST}, {"type": "string", "format": "date-time"}]}
    ),
]


def _unset(description: str) -> Any:
    """A PATCH field, or a usage row's dimension: optional, but `null` is not a value (the
    type says what is), and the default is never applied (only the fields sent are, only
    the dimensions kept are shown), so the schema shows none."""
    return Field(default=None, description=description, json_schema_extra=_drop_default)


def _drop_default(schema: JsonDict) -> None:
    schema.pop("default", None)


def _number_type(annotation: Any) -> type:
    """`int` or `float`, out of `Optional[Annotated[int, ...]]` and the like."""
    for arg in typing.get_args(annotation) or (annotation,):
        base = typing.get_args(arg)[0] if typing.get_origin(arg) is Annotated else arg
        if base in (int, float):
            return base
    raise TypeError(f"Limits field of unexpected type {annotation!r}")


def _limits_input_fields() -> dict[str, Any]:
    return {
        name: (Annotated[_number_type(field.annotation), Field(ge=0, le=MAX_COUNT)] | None, None)
        for name, field in Limits.model_fields.items()
    }


# The request-side twin of `Limits`, generated from it so the two cannot drift, with an
# upper bound on every count (see MAX_COUNT).
LimitsInput = create_model(
    "LimitsInput",
    __config__=ConfigDict(extra="forbid"),
    __doc__=(
        "Per-team or per-key limits; every field optional, absent or null = unlimited (a team's "
        "count_tokens_per_minute: the gateway's limits.default_count_tokens_per_minute)."
    ),
    **_limits_input_fields(),
)


def limits_from(value: BaseModel | None, base: Limits | None = None) -> Limits:
    """`LimitsInput` → `Limits`; with `base`, only the fields that were sent change."""
    changes = value.model_dump(exclude_unset=True) if value is not None else {}
    return Limits.model_validate({**(base.model_dump() if base else {}), **changes})


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeamCreate(_Body):
    id: TeamId
    name: Name = ""
    models: ModelList = Field(default_factory=lambda: ["*"], description="model names or wildcards (`claude-*`)")
    limits: LimitsInput = Field(default_factory=LimitsInput)  # type: ignore[valid-type]
    metadata: Metadata = Field(default_factory=dict)


class TeamUpdate(_Body):
    name: Name = _unset("the team's display name")
    models: ModelList = _unset("replaces the list of model names or wildcards")
    limits: LimitsInput = _unset("merged into the current limits; a null field lifts that limit")  # type: ignore[valid-type]
    metadata: Metadata = _unset("replaces the metadata")


class KeyCreate(_Body):
    teams: Annotated[list[TeamId], Field(min_length=1, max_length=64)]
    default_team: TeamId | None = Field(default=None, description="one of `teams`; the first when absent")
    name: Name = ""
    description: Text = ""
    expires_at: Timestamp | None = Field(default=None, description="Unix seconds or RFC 3339; null: never")
    models: ModelList | None = Field(default=None, description="narrower than the teams'; null: the team's")
    limits: LimitsInput = Field(default_factory=LimitsInput)  # type: ignore[valid-type]


class KeyUpdate(_Body):
    name: Name = _unset("the key's name")
    description: Text = _unset("the key's description")
    teams: Annotated[list[TeamId], Field(min_length=1, max_length=64)] = _unset("replaces the key's teams")
    default_team: TeamId = _unset("one of the key's teams")
    expires_at: Timestamp | None = _unset("Unix seconds or RFC 3339; null: never")
    models: ModelList | None = _unset("narrower than the teams'; null: the team's")
    limits: LimitsInput = _unset("merged into the current limits; a null field lifts that limit")  # type: ignore[valid-type]


class KeyRotate(_Body):
    grace_seconds: Annotated[float, Field(ge=0, le=MAX_GRACE_SECONDS)] = Field(
        default=0, description="how long the previous key keeps working; 0: it stops at once"
    )


# ---------------------------------------------------------------------------- responses


class TeamView(BaseModel):
    id: str
    name: str
    models: list[str]
    limits: Limits
    metadata: dict[str, str]
    created_at: float
    managed_by: Literal["config"] | None = Field(
        description="`config`: declared in the configuration file, which owns it (changes here are refused)"
    )


class KeyView(BaseModel):
    """A key as operators see it: never its hash, never the key."""

    id: str
    name: str
    description: str
    prefix: str = Field(description="the key's first characters, to recognise it")
    teams: list[str]
    default_team: str
    models: list[str] | None
    limits: Limits
    expires_at: float | None
    revoked_at: float | None
    created_at: float
    rotated_at: float | None
    last_used_at: float | None
    status: Literal["active", "revoked", "expired"]
    managed_by: Literal["config"] | None = Field(
        description="`config`: declared in the configuration file, which owns all but `expires_at` and revocation"
    )


class NewKey(KeyView):
    """The only answer that holds the key itself: store it now, it is not shown again."""

    key: str


class RotatedKey(NewKey):
    previous_key_expires_at: float = Field(description="until when the previous key still works")


class TeamList(BaseModel):
    data: list[TeamView]


class KeyList(BaseModel):
    data: list[KeyView]


class Deleted(BaseModel):
    id: str
    deleted: Literal[True] = True


class Reloaded(BaseModel):
    reloaded: Literal[True] = True
    models: int
    backends: int


class DeploymentHealth(BaseModel):
    """One deployment as this process sees it (breakers are per process)."""

    model: str
    backend: str
    upstream_model: str
    weight: float
    state: Literal["closed", "open", "half_open"]
    retry_in: float = Field(description="seconds until an open breaker lets a probe through")
    in_flight: int


class Health(BaseModel):
    deployments: list[DeploymentHealth]


# What a usage report's rows can be summed by (`accounts.usage_report`).
UsageGroup = Literal["day", "key", "model"]


class UsageTotals(BaseModel):
    requests: int
    input: int = Field(description="uncached input tokens")
    output: int = Field(description="output tokens")
    cache_read: int = Field(description="input tokens read from the prompt cache")
    cache_creation: int = Field(description="input tokens written to the prompt cache")
    cost: float = Field(description="USD, from the models' pricing (0 without), to a billionth")


class _UsageDimensions(BaseModel):
    day: str = _unset("YYYY-MM-DD, UTC")
    key: str = _unset("the key's id")
    model: str = _unset("the model's canonical name")


class UsageRow(UsageTotals, _UsageDimensions):  # (fields in reverse order of bases: dimensions first)
    """One day, key and model; with `by`, only that dimension, summed over the others."""


class UsageReport(BaseModel):
    team: str
    since: str = Field(description="the first day, YYYY-MM-DD (UTC)")
    until: str = Field(description="the last day, YYYY-MM-DD (UTC), inclusive")
    by: UsageGroup | None = Field(description="the dimension rows are summed by; null: none")
    rows: list[UsageRow]
    totals: UsageTotals


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorBody(BaseModel):
    """Every error the gateway answers with, admin API included."""

    type: Literal["error"]
    error: ErrorDetail
    request_id: str


# ---------------------------------------------------------------------------- messages


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# `list[constrained-str]`, `function-before[...]`, `int`: pydantic's names for union members.
_TYPE_TAG = re.compile(r"^(int|float|str|bool|[a-z-]+\[.*\])$")


def describe(error: ValidationError) -> str:
    """One line naming every bad field: `limits.requests_per_minute: Input should be ...`."""
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        # Union members and wrappers add their names to the location; readers want fields.
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and _TYPE_TAG.match(p)))
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        problems.append(f"{_path(loc) or 'body'}: {message}")
    return "; ".join(dict.fromkeys(problems))
