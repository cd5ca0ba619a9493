"""`validate_request`: each invalid body in tests/fixtures/messages/invalid is a 400
invalid_request_error whose message names the bad field by path (the API's own style,
`messages.0.role: …`); each body in tests/fixtures/messages/valid passes unchanged.

The valid set is mostly what Claude Code really sends (trimmed captures): every
400 there makes it re-send the same turn up to five more times."""

from __future__ import annotations

import copy

import pytest

from gateway.errors import InvalidRequest
from gateway.protocols.messages import DEFAULT_CAPS, MAX_MODEL_NAME, MAX_TOKENS, Caps, validate_request
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


BODY = {"model": "m", "messages": [{"role": "user", "content": "x"}]}


def _refusal(body: dict, caps: Caps = DEFAULT_CAPS) -> str:
    with pytest.raises(InvalidRequest) as caught:
        validate_request(body, caps)
    return caught.value.message


def test_the_caps_are_the_callers():
    caps = Caps(max_messages=2, max_blocks_per_message=3, max_json_depth=8)
    turn = {"role": "user", "content": [{"type": "text", "text": "x"}] * 3}
    assert validate_request({**BODY, "messages": [turn, turn]}, caps)
    assert _refusal({**BODY, "messages": [turn] * 3}, caps) == (
        "messages: 3 messages, more than the limit of 2 (server.max_messages)"
    )
    assert _refusal({**BODY, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}] * 4}]}, caps) == (
        "messages.0.content: 4 content blocks, more than the limit of 3 (server.max_blocks_per_message)"
    )


def test_depth_counts_objects_and_lists_and_names_where():
    caps = Caps(max_json_depth=8)
    # the body is level 1, metadata 2, then six more: 8
    assert validate_request({**BODY, "metadata": {"a": [[{"b": [{"c": []}]}]]}}, caps)
    assert _refusal({**BODY, "metadata": {"a": [[{"b": [{"c": [[]]}]}]]}}, caps) == (
        "metadata.a.0.0.b...: JSON nested more than 8 levels deep (server.max_json_depth)"
    )
    assert (
        _refusal({**BODY, "x": [[[[[[[[]]]]]]]]}, caps)
        == "x.0.0.0.0...: JSON nested more than 8 levels deep (server.max_json_depth)"
    )


def test_depth_is_found_without_recursion():
    deep: list = []
    for _ in range(100_000):  # only Python can build this: no JSON parser takes it
        deep = [deep]
    assert "JSON nested more than 128 levels deep" in _refusal({**BODY, "tools": deep})


def test_the_model_name_is_bounded():
    assert validate_request({**BODY, "model": "m" * MAX_MODEL_NAME})
    assert _refusal({**BODY, "model": "m" * (MAX_MODEL_NAME + 1)}) == "model: String should have at most 256 characters"


def test_max_tokens_is_bounded():
    # A security review's body: `max_tokens: 10000000000000000000` went on into admission,
    # which held that much of the team's budget while the request ran.
    assert validate_request({**BODY, "max_tokens": MAX_TOKENS})
    assert (
        _refusal({**BODY, "max_tokens": MAX_TOKENS + 1}) == "max_tokens: Input should be less than or equal to 1000000"
    )
    assert _refusal({**BODY, "max_tokens": 10**19}) == "max_tokens: Input should be less than or equal to 1000000"
