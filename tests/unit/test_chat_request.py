"""Messages request → Chat Completions request, against the golden fixtures in
tests/fixtures/chat/requests (one case per file; each names the mapping row or pitfall
it pins, in docs/protocol-mapping.md). Peers got these wrong in ways clients notice: tool
results dumped as JSON (P1), system blocks glued together (P38), parallel tool use ignored (P29), DeepSeek
history without reasoning (P22), tool names over 64 characters (P25)."""

from __future__ import annotations

import copy
from dataclasses import replace

import orjson
import pytest

from gateway.backends.presets import PRESETS
from gateway.errors import GatewayError
from gateway.protocols.messages import validate_request
from gateway.translate.messages_chat import request as chat_request
from gateway.translate.messages_chat.request import to_chat_request
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


# ---------------------------------------------------------------------------- long runs of one role


def _chat_messages(messages: list[dict]) -> list[dict]:
    return to_chat_request({"model": "m", "messages": messages}, upstream_model="m-up", dialect=PRESETS["vllm"]).body[
        "messages"
    ]


def test_a_long_run_of_user_turns_is_one_message():
    """Regression: consecutive turns of one role were joined one at a time, each join copying
    everything joined before it (10,000 ten-character turns took 0.1 s, 40,000 took 1.1 s;
    a 32 MiB body of them held the worker for minutes). Each run is now joined once; the
    joined turn must still hold every turn, in order."""
    turns = [f"turn {i}" for i in range(20_000)]
    assert _chat_messages([{"role": "user", "content": t} for t in turns]) == [
        {"role": "user", "content": "\n".join(turns)}
    ]


def test_long_mixed_runs_keep_every_part_and_call_in_order():
    n = 2_000
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    users = [
        {"role": "user", "content": f"u{i}" if i % 2 else [image, {"type": "text", "text": f"u{i}"}]} for i in range(n)
    ]
    assistants = [
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": f"t{i}", "signature": "s"},
                {"type": "text", "text": f"a{i}"},
                {"type": "tool_use", "id": f"toolu_{i}", "name": "f", "input": {"i": i}},
            ],
        }
        for i in range(n)
    ]
    request = {"model": "m", "messages": [*users, *assistants, {"role": "user", "content": "end"}]}
    dialect = replace(PRESETS["vllm"], reasoning_history="reasoning_content")
    user, assistant, end = to_chat_request(request, upstream_model="m-up", dialect=dialect).body["messages"]

    image_part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    assert user == {
        "role": "user",
        "content": [
            part
            for i in range(n)
            for part in (
                [{"type": "text", "text": f"u{i}"}] if i % 2 else [image_part, {"type": "text", "text": f"u{i}"}]
            )
        ],
    }
    assert assistant["content"] == "\n".join(f"a{i}" for i in range(n))
    assert assistant["reasoning_content"] == "\n".join(f"t{i}" for i in range(n))
    assert [orjson.loads(call["function"]["arguments"]) for call in assistant["tool_calls"]] == [
        {"i": i} for i in range(n)
    ]
    assert end == {"role": "user", "content": "end"}


def test_each_run_of_one_role_is_joined_once(monkeypatch):
    joined: list[int] = []
    join = chat_request._join_run
    monkeypatch.setattr(chat_request, "_join_run", lambda run: joined.append(len(run)) or join(run))
    runs = [("user" if r % 2 == 0 else "assistant", 50 + r) for r in range(40)]
    messages = [{"role": role, "content": f"{r}.{i}"} for r, (role, size) in enumerate(runs) for i in range(size)]
    out = _chat_messages(messages)
    assert joined == [size for _, size in runs]
    assert [m["content"] for m in out] == [
        "\n".join(f"{r}.{i}" for i in range(size)) for r, (_, size) in enumerate(runs)
    ]


def test_a_schema_of_any_depth_is_judged_without_recursion():
    """The translator alone (validation bounds depth before it) must not run out of stack
    on a deep output schema: it walked one with recursion, a RecursionError at ~1000 levels."""
    schema: dict = {"type": "string"}
    for _ in range(5_000):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"], "additionalProperties": False}
    request = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "output_config": {"format": {"type": "json_schema", "schema": schema}},
    }
    body = to_chat_request(request, upstream_model="m-up", dialect=PRESETS["openai"]).body
    assert body["response_format"]["json_schema"]["strict"] is True
    schema["properties"]["a"]["additionalProperties"] = True  # one open object, one level down
    assert (
        to_chat_request(request, upstream_model="m-up", dialect=PRESETS["openai"]).body["response_format"][
            "json_schema"
        ]["strict"]
        is False
    )
