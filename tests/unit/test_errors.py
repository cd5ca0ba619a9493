"""The error tree: each class's status, Messages error type and retry advice, decided once."""

from __future__ import annotations

import pytest

from gateway import errors

TABLE = [
    (errors.InvalidRequest, 400, "invalid_request_error", None),
    (errors.MethodNotAllowed, 405, "invalid_request_error", None),
    (errors.AuthenticationFailed, 401, "authentication_error", "false"),
    (errors.PermissionDenied, 403, "permission_error", "false"),
    (errors.NotFound, 404, "not_found_error", None),
    (errors.RequestTooLarge, 413, "request_too_large", None),
    (errors.RateLimited, 429, "rate_limit_error", None),
    (errors.GatewayError, 500, "api_error", None),
    (errors.UpstreamProtocolError, 500, "api_error", None),
    (errors.UpstreamTimeout, 504, "timeout_error", None),
    (errors.Overloaded, 529, "overloaded_error", None),
]


@pytest.mark.parametrize(("cls", "status", "error_type", "should_retry"), TABLE, ids=[row[0].__name__ for row in TABLE])
def test_status_type_and_retry_advice(cls, status, error_type, should_retry):
    error = cls("something happened", headers={"retry-after": "3"} if status == 429 else None)
    assert error.status == status and error.error_type == error_type
    assert error.body("req_1") == {
        "type": "error",
        "error": {"type": error_type, "message": "something happened"},
        "request_id": "req_1",
    }
    headers = error.response_headers()
    # Claude Code retries a 401 ten times unless told not to.
    assert headers.get("x-should-retry") == should_retry
    if status == 429:
        assert headers["retry-after"] == "3"
