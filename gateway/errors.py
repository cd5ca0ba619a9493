"""Every error the gateway answers with, and the status and Messages error type each one carries.

    GatewayError                      500 api_error
    ├── InvalidRequest                400 invalid_request_error
    │   ├── ContextWindowExceeded     400 invalid_request_error
    │   ├── MethodNotAllowed          405 invalid_request_error
    │   └── RequestTimedOut           408 invalid_request_error
    ├── AuthenticationFailed          401 authentication_error
    ├── PermissionDenied              403 permission_error
    ├── NotFound                      404 not_found_error
    ├── Conflict                      409 invalid_request_error
    ├── RequestTooLarge               413 request_too_large
    ├── RateLimited                   429 rate_limit_error
    ├── UpstreamProtocolError         502 api_error
    │   └── UpstreamTooLarge          502 api_error
    ├── UpstreamTimeout               504 timeout_error
    └── Overloaded                    529 overloaded_error
        ├── StoreUnavailable          529 overloaded_error
        └── TooManyConnections        503 overloaded_error

Status and type are decided here, once, as class attributes. Only the HTTP edge
(`middleware.py`) and the stream pump turn an error into bytes; this module imports
no I/O library so the pure translators can raise these too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Every error type a Messages client knows (the API's own list, wider than this tree's).
MESSAGES_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "timeout_error",
        "overloaded_error",
    }
)


class GatewayError(Exception):
    """Base: an unexpected failure inside the gateway or upstream. 500 `api_error`."""

    status: int = 500
    error_type: str = "api_error"
    # Clients (Claude Code, the SDKs) retry anything not marked otherwise; errors that
    # a retry cannot fix say so with `x-should-retry: false`.
    retryable: bool | None = None
    # Set on errors that came from an upstream, for routing to decide on retries and
    # fallbacks: the upstream's HTTP status, or the kind of transport failure
    # ("connect", "timeout"), and the seconds it asked to wait.
    upstream_status: int | None = None
    upstream_failure: str | None = None
    upstream_retry_after: float | None = None

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})

    def response_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.retryable is False:
            headers.setdefault("x-should-retry", "false")
        return headers

    def body(self, request_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "error", "error": {"type": self.error_type, "message": self.message}}
        if request_id:
            body["request_id"] = request_id
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"


class ContextWindowExceeded(InvalidRequest):
    """The upstream refused the request as too long for the model's context window (the
    prompt, or the prompt with `max_tokens`). Still the client's 400, in the Messages API's
    own words, which clients act on by compacting; routing may first send it to the
    model's `context_fallbacks`."""


class MethodNotAllowed(InvalidRequest):
    status = 405


class RequestTimedOut(InvalidRequest):
    """The client did not send its request's headers or body within the server's
    deadline (`server.header_timeout`, `server.body_timeout`); the connection closes."""

    status = 408


class AuthenticationFailed(GatewayError):
    status = 401
    error_type = "authentication_error"
    retryable = False


class PermissionDenied(GatewayError):
    status = 403
    error_type = "permission_error"
    retryable = False


class NotFound(GatewayError):
    status = 404
    error_type = "not_found_error"


class Conflict(GatewayError):
    """The admin API's answer to a clash: an id already taken, a team still in use."""

    status = 409
    error_type = "invalid_request_error"


class RequestTooLarge(GatewayError):
    status = 413
    error_type = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    error_type = "rate_limit_error"


class UpstreamTimeout(GatewayError):
    status = 504
    error_type = "timeout_error"


class Overloaded(GatewayError):
    status = 529
    error_type = "overloaded_error"


class UpstreamProtocolError(GatewayError):
    """The upstream answered something that is not its protocol (bad JSON, wrong shape):
    a bad gateway, never the client's to fix (and never a 500, which reads as a bug here)."""

    status = 502


class UpstreamTooLarge(UpstreamProtocolError):
    """The upstream's answer went past what the gateway reads of one (a backend's
    `max_response_bytes`): a broken or hostile upstream, as a bad gateway."""

    status = 502


class StoreUnavailable(Overloaded):
    """The key store cannot be reached: a dependency is down, not the client's key wrong
    (a 401 here would make every client think its key was revoked)."""


class TooManyConnections(Overloaded):
    """A worker already holds `server.max_connections` open connections on the listener.
    503, as load balancers expect of a full backend (they may try another)."""

    status = 503
