"""What a native (Messages) backend lets through to its upstream, beyond the fields the gateway reads.

A native backend calls the upstream with the operator's organisation key, and some
features of the Messages API act on what the organisation has stored, not on what the
request carries: a Files API `file_id`, a code-execution `container`, MCP servers and
tunnels, server-held threads. A tenant who learns another's file or container id would
reach it through the shared key. So each native backend has a policy
(`backends.NAME.passthrough`) and a team may narrow it (`teams[].passthrough`), never
widen it:

- `betas`: the `anthropic-beta` values a request may send;
- `tools`: the tool `type`s (`custom` for client tools, also those with no `type`);
- `fields`: the top-level body fields beyond those the gateway reads itself (`ALWAYS`);
- `files`: whether content may refer to Files API objects (any `file_id` in a block).

A list is read in order and the last pattern that matches a value decides: `pattern`
lets it through, `!pattern` refuses it, and a value that no pattern matches is refused.
Patterns are fnmatch's (`*`, `?`, `[...]`). A refusal is a 400 naming the value and the
setting; nothing is silently dropped, since a request changed behind the client's back
(a beta removed, a tool missing) fails in ways nobody can trace.

The defaults let through what Claude Code and the SDKs send, client tools and the
common server tools, and refuse what reaches stored organisation resources. Betas are
open but for those (a new client release adds betas every few weeks, and a beta does
nothing without a field, tool or block that uses it); fields and tools are closed lists,
since new organisation-wide features arrive as new fields and tools.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.errors import InvalidRequest
from gateway.protocols.messages import COMPAT_FIELDS, KNOWN_FIELDS, Message, MessagesRequest

if TYPE_CHECKING:
    from gateway.config import PassthroughConfig, TeamBootstrap, TeamPassthrough

# Fields the gateway validates and reads itself; they always pass (tools are judged one by one).
ALWAYS = KNOWN_FIELDS - COMPAT_FIELDS
BETA_HEADER = "anthropic-beta"

_CONTAINERS = (dict, list)
# The longest value a refusal quotes in full.
_SHOWN = 100
# What a pattern list remembers its answers for: at most this many distinct values (past
# it, each is matched anew), none longer than `_REMEMBERED` (a client chooses them).
_MEMORY = 1024
_REMEMBERED = 256


@dataclass(frozen=True, slots=True)
class Patterns:
    """An ordered pattern list (see the module's docstring) and what it answered so far."""

    patterns: tuple[str, ...]
    _rules: tuple[tuple[bool, re.Pattern], ...] = field(init=False, repr=False, compare=False)
    _answers: dict[str, bool] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        rules = tuple(
            (not pattern.startswith("!"), re.compile(fnmatch.translate(pattern.removeprefix("!"))))
            for pattern in reversed(self.patterns)
        )
        object.__setattr__(self, "_rules", rules)

    def allows(self, value: str) -> bool:
        answer = self._answers.get(value)
        if answer is None:
            answer = next((allowed for allowed, rule in self._rules if rule.match(value)), False)
            if len(self._answers) < _MEMORY and len(value) <= _REMEMBERED:
                self._answers[value] = answer
        return answer


@dataclass(frozen=True, slots=True)
class Policy:
    """One backend's policy, or a team's narrowing of it (None: that part is not narrowed).
    Refusals say `where` it applies and name the `setting`."""

    where: str  # "on this route", "for team 'search'"
    setting: str  # "passthrough", "teams[].passthrough"
    betas: Patterns | None = None
    tools: Patterns | None = None
    fields: Patterns | None = None
    files: bool | None = None
    # Whole `anthropic-beta` headers found to pass.
    passed: set[str] = field(default_factory=set, repr=False, compare=False)

    @classmethod
    def of(cls, settings: PassthroughConfig | TeamPassthrough, where: str, setting: str) -> Policy:
        def patterns(values: Sequence[str] | None, lower: bool = False) -> Patterns | None:
            if values is None:
                return None
            return Patterns(tuple(v.lower() for v in values) if lower else tuple(values))

        return cls(
            where=where,
            setting=setting,
            betas=patterns(settings.betas, lower=True),  # so that `FILES-API-…` cannot slip past `!files-api-*`
            tools=patterns(settings.tools),
            fields=patterns(settings.fields),
            files=settings.files,
        )


def backend_policy(settings: PassthroughConfig) -> Policy:
    return Policy.of(settings, "on this route", "passthrough")


def team_policies(teams: Sequence[TeamBootstrap]) -> dict[str, Policy]:
    """Team id → its narrowing, for the teams the configuration narrows."""
    return {
        team.id: Policy.of(team.passthrough, f"for team '{team.id}'", "teams[].passthrough")
        for team in teams
        if team.passthrough is not None
    }


def check(body: MessagesRequest, betas: str | None, policies: Sequence[Policy]) -> None:
    """Refuse (`InvalidRequest`) a request that carries anything one of `policies` does not
    let through: the backend's, then the team's narrowing of it. `betas`: the
    `anthropic-beta` header as it will be forwarded."""
    for policy in policies:
        if betas and policy.betas is not None:
            _check_betas(betas, policy)
        if policy.fields is not None:
            _check_fields(body, policy)
        if policy.tools is not None:
            _check_tools(body, policy)
        if policy.files is False:
            _check_files(body, policy)


def _check_betas(header: str, policy: Policy) -> None:
    assert policy.betas is not None
    if header in policy.passed:  # a client sends the same header on every request
        return
    for value in header.split(","):
        beta = value.strip().lower()
        if beta and not policy.betas.allows(beta):
            raise InvalidRequest(
                f"{BETA_HEADER} '{_shown(beta)}' is not allowed {policy.where} ({policy.setting}.betas)"
            )
    if len(policy.passed) < _MEMORY and len(header) <= 4 * _REMEMBERED:
        policy.passed.add(header)


def _check_fields(body: MessagesRequest, policy: Policy) -> None:
    assert policy.fields is not None
    for name in body:
        if name not in ALWAYS and not policy.fields.allows(name):
            shown = _shown(name)
            raise InvalidRequest(
                f"{shown}: the field '{shown}' is not allowed {policy.where} ({policy.setting}.fields)"
            )


def _check_tools(body: MessagesRequest, policy: Policy) -> None:
    assert policy.tools is not None
    for i, tool in enumerate(body.get("tools") or ()):
        kind = tool.get("type") or "custom"  # validated: a dict, its type a string if present
        if not policy.tools.allows(kind):
            raise InvalidRequest(
                f"tools.{i}.type: the tool type '{_shown(kind)}' is not allowed {policy.where} ({policy.setting}.tools)"
            )


def _check_files(body: MessagesRequest, policy: Policy) -> None:
    path = file_reference(body["messages"])
    if path is not None:
        raise InvalidRequest(
            f"{path}: Files API references (file_id) are not allowed {policy.where} ({policy.setting}.files)"
        )


def _shown(value: str) -> str:
    """A client's value as a refusal quotes it: a body-sized one is cut."""
    return value if len(value) <= _SHOWN else value[:_SHOWN] + "..."


def file_reference(messages: list[Message]) -> str | None:
    """The path of a `file_id` in the messages' content blocks (a file source, a container
    upload, a code-execution output), or None. A tool's `input` is the client's own data,
    not a reference the upstream resolves, and is not looked into. Walked with a stack,
    not recursion; paths are spelled out only once one is found (they cost more than the walk)."""
    if not _has_file_id(messages):
        return None
    pending: list[tuple[str, object]] = [
        (f"messages.{i}.content", message["content"])
        for i, message in enumerate(messages)
        if type(message.get("content")) is list
    ]
    while pending:
        path, node = pending.pop()
        if type(node) is list:
            pending.extend((f"{path}.{k}", item) for k, item in enumerate(node) if type(item) in _CONTAINERS)
            continue
        assert isinstance(node, dict)
        if node.get("file_id") is not None:
            return f"{path}.file_id"
        pending.extend(
            (f"{path}.{key}", value) for key, value in node.items() if key != "input" and type(value) in _CONTAINERS
        )
    return None


def _has_file_id(messages: list) -> bool:
    """`file_reference`'s walk without the paths: what every request pays."""
    pending = [message["content"] for message in messages if type(message.get("content")) is list]
    while pending:
        node = pending.pop()
        if type(node) is list:
            for item in node:
                if type(item) is dict or type(item) is list:
                    pending.append(item)
            continue
        if node.get("file_id") is not None:
            return True
        for key, value in node.items():
            if (type(value) is dict or type(value) is list) and key != "input":
                pending.append(value)
    return False
