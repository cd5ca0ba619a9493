"""`Exchange`: the typed record of one request as it moves through the gateway.

Every step writes what it learned (model, route, usage, timings, outcome) here instead
of into a dict bag; the access log, metrics and settlement read it once at the end.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.passthrough import Policy


def new_request_id() -> str:
    # Unique, not secret: the process's PRNG (seeded from the OS at start) spares a
    # system call per request that os.urandom would make.
    return f"req_{random.getrandbits(96):024x}"


@dataclass(slots=True)
class Exchange:
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.perf_counter)
    method: str = ""
    path: str = ""
    team_id: str | None = None
    key_id: str | None = None  # the key's id, never the key
    # The team's narrowing of what native backends pass on (`teams[].passthrough`), if any.
    team_passthrough: Policy | None = None
    model: str | None = None  # as the client asked
    served_model: str | None = None  # the configured model that answered (after aliases, fallbacks)
    backend: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    status: int = 0
    error_type: str | None = None
    usage: Mapping[str, Any] | None = None  # in Messages' `usage` shape
    # The local estimate of the request's input tokens, made once (admission needs it, and
    # a translated backend reports it when the upstream gives no usage).
    input_estimate: int | None = None
    usage_estimated: bool = False  # the upstream reported none; the gateway estimated it
    # The team's anthropic-ratelimit-* headers, for every answer once it was admitted.
    ratelimit_headers: dict[str, str] = field(default_factory=dict)
    upstream_seconds: float = 0.0
    first_token_seconds: float | None = None
    # Routing: upstream attempts beyond the first, and the models fallen back to.
    retries: int = 0
    fallbacks: list[str] = field(default_factory=list)
    # Upstream failures met on the way, as (backend, kind) — kind: connect, timeout,
    # status_429, status_5xx, protocol, stream_* — whether or not a retry then succeeded.
    upstream_errors: list[tuple[str, str]] = field(default_factory=list)
    # The limit that refused the request (a `Limits` field), when one did.
    rejected_limit: str | None = None
    # A stream that failed after it started, by the upstream's doing: stream_reset,
    # stream_timeout, stream_protocol or stream_error (an in-band error event).
    stream_failure: str | None = None
    # Sent to a deployment that was cooling down, since all of them were.
    panic: bool = False

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
