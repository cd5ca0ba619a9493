"""Chat Completions response → Messages response, against the golden fixtures in
tests/fixtures/chat/responses. Each fixture holds the client's request (for the stop
sequences and tool names the answer depends on), the upstream body and the Messages
body the client must get (docs/protocol-mapping.md); peers reported `stop` with tool calls
as end_turn (P12), content_filter as stop_sequence (P13) and cached tokens twice (P21)."""

from __future__ import annotations

import copy

import pytest

from gateway.errors import GatewayError
from gateway.protocols.messages import validate_request
from gateway.translate.messages_chat.request import to_chat_request
from gateway.translate.messages_chat.response import from_chat_response
from tests.support.golden import Golden, describe_error, dialect_of, params

EXPECTED_KEYS = ("messages_response", "error")
RANDOM_ID = "msg_*"  # the upstream sent no id: the gateway's is random, only its prefix is fixed


def _comparable(response: dict, upstream: dict) -> dict:
    upstream_id = upstream.get("id") if isinstance(upstream, dict) else None
    if isinstance(upstream_id, str) and upstream_id:
        return response
    assert isinstance(response.get("id"), str) and response["id"].startswith("msg_") and len(response["id"]) > 4
    return {**response, "id": RANDOM_ID}


@pytest.mark.parametrize("golden", params("chat/responses"))
def test_response_golden(golden: Golden, update_goldens: bool) -> None:
    request = {"messages": [{"role": "user", "content": "hi"}], **golden["request"]}
    validate_request(copy.deepcopy(request))
    call = to_chat_request(
        request, upstream_model=golden.get("upstream_model", "upstream-model"), dialect=dialect_of(golden["dialect"])
    )
    upstream = golden["chat_response"]
    before = copy.deepcopy(upstream)

    try:
        response = from_chat_response(upstream, call, input_tokens=golden.get("input_tokens_estimate", 0))
    except GatewayError as error:
        actual: dict = {"error": describe_error(error, golden.get("error"))}
    else:
        actual = {"messages_response": _comparable(response, upstream)}
    assert upstream == before, "the translator mutated its input"
    golden.check(actual, EXPECTED_KEYS, update=update_goldens)
