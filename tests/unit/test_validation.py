"""`validate_request`: each invalid body in tests/fixtures/messages/invalid is a 400
invalid_request_error whose message names the bad field by path (the API's own style,
`messages.0.role: …`); each body in tests/fixtures/messages/valid passes unchanged.

The valid set is mostly what Claude Code really sends (docs: real-clients §3.3): every
400 there makes it re-send the same turn up to five more times."""

from __future__ import annotations

import copy

import pytest

from gateway.errors import InvalidRequest
from gateway.protocols.messages import validate_request
from tests.support.golden import Golden, params


@pytest.mark.parametrize("golden", params("messages/invalid"))
def test_invalid_body(golden: Golden, update_goldens: bool) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_request(copy.deepcopy(golden["body"]))
    error = caught.value
    assert (error.status, error.error_type) == (400, "invalid_request_error")
    wanted = golden["message_contains"]
    actual = wanted if wanted in error.message else error.message
    golden.check({"message_contains": actual}, ("message_contains",), update=update_goldens)


@pytest.mark.parametrize("golden", params("messages/valid"))
def test_valid_body(golden: Golden) -> None:
    body = golden["body"]
    before = copy.deepcopy(body)
    assert validate_request(body) is body
    assert body == before
