"""Upstream HTTP error → the error the client gets, against tests/fixtures/chat/errors.

Mapped by status, never by the upstream's own `type` string (envoy copied it and
invented types clients do not know); context-length overflows get the Messages API's
own wording so clients that compact on "prompt is too long" can (P34 in
docs/protocol-mapping.md); the gateway's own credential problems are never shown as the client's 401."""

from __future__ import annotations

import pytest

from gateway.translate.upstream_errors import error_from_upstream
from tests.support.golden import Golden, describe_error, params

EXPECTED_KEYS = ("expected",)


@pytest.mark.parametrize("golden", params("chat/errors"))
def test_upstream_error_golden(golden: Golden, update_goldens: bool) -> None:
    expected = golden["expected"]
    error = error_from_upstream(golden["status"], golden["body"].encode(), golden.get("headers") or {})
    actual = describe_error(error, expected)
    if "headers" in expected or error.response_headers():
        actual["headers"] = error.response_headers()
    # Never a vendor error type: only the Messages API's own.
    assert error.error_type in {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "timeout_error",
        "overloaded_error",
    }
    golden.check({"expected": actual}, EXPECTED_KEYS, update=update_goldens)
