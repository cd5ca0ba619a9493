"""Messages request → Chat Completions request, against the golden fixtures in
tests/fixtures/chat/requests (one case per file; each names the mapping row or pitfall
it pins). Peers got these wrong in ways clients notice: tool results dumped as JSON
(P1), system blocks glued together (P38), parallel tool use ignored (P29), DeepSeek
history without reasoning (P22), tool names over 64 characters (P25)."""

from __future__ import annotations

import copy

import pytest

from gateway.errors import GatewayError
from gateway.protocols.messages import validate_request
from gateway.translate.chat_request import to_chat_request
from tests.support.golden import Golden, describe_error, dialect_of, params

EXPECTED_KEYS = ("chat_request", "tool_names", "error")


@pytest.mark.parametrize("golden", params("chat/requests"))
def test_request_golden(golden: Golden, update_goldens: bool) -> None:
    request = golden["messages_request"]
    # Every case is a request the gateway accepts; the translator alone decides.
    validate_request(copy.deepcopy(request))
    before = copy.deepcopy(request)
    dialect = dialect_of(golden["dialect"])

    try:
        call = to_chat_request(request, upstream_model=golden["upstream_model"], dialect=dialect)
    except GatewayError as error:
        actual: dict = {"error": describe_error(error, golden.get("error"))}
    else:
        actual = {"chat_request": call.body}
        if call.tool_names:
            actual["tool_names"] = dict(call.tool_names)
        # A retry or a fallback translates the same request again: same answer, input untouched.
        again = to_chat_request(request, upstream_model=golden["upstream_model"], dialect=dialect)
        assert again.body == call.body
        assert call.model == request["model"]
        assert call.stop_sequences == tuple(request.get("stop_sequences") or ())
        assert "n" not in call.body
    assert request == before, "the translator mutated its input"
    golden.check(actual, EXPECTED_KEYS, update=update_goldens)
