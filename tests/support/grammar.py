"""The Messages stream grammar (docs/protocol-mapping.md §2.2, §2.3) as an assertion.

    stream := message_start ping* block* message_delta+ message_stop     (success)
            | [message_start ...] error                                  (failure)
    block  := content_block_start (content_block_delta | ping)* content_block_stop

plus the rules the SDK accumulators depend on: block indexes 0, 1, 2… in start order,
one block open at a time, deltas only for the open block and of a type that fits it, a
`signature_delta` only last in a thinking block, usage with integer `output_tokens` on
every `message_delta`, and nothing after `message_stop` or `error`. The gateway emits no
event type outside the grammar, so unknown types fail here (clients would ignore them).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

STOP_REASONS = frozenset(
    {"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal", "model_context_window_exceeded"}
)
ERROR_TYPES = frozenset(
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
TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")

# block type → the delta types that fit it
_DELTAS = {
    "text": {"text_delta": "text", "citations_delta": "citation"},
    "thinking": {"thinking_delta": "thinking", "signature_delta": "signature"},
    "tool_use": {"input_json_delta": "partial_json"},
    "server_tool_use": {"input_json_delta": "partial_json"},
}
_COMPLETE_BLOCKS = {"redacted_thinking", "web_search_tool_result"}  # arrive whole, no deltas


def check_stream(events: list[dict]) -> None:
    """Raise AssertionError, naming the event, when `events` break the Messages grammar."""
    _Checker().run(events)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Checker:
    def __init__(self) -> None:
        self.started = False
        self.open: int | None = None
        self.open_type: str | None = None
        self.signed = False
        self.next_index = 0
        self.deltas_seen = 0
        self.json: dict[int, list[str]] = {}
        self.stop_reason: str | None = None
        self.ended = False
        self.at = 0

    def fail(self, problem: str) -> None:
        raise AssertionError(f"event {self.at}: {problem}")

    def expect(self, condition: bool, problem: str) -> None:
        if not condition:
            self.fail(problem)

    def run(self, events: list[dict]) -> None:
        self.expect(isinstance(events, list) and len(events) > 0, "the stream is empty")
        for self.at, event in enumerate(events):
            self.expect(not self.ended, f"{event.get('type')!r} after the end of the stream")
            self.expect(isinstance(event, dict) and isinstance(event.get("type"), str), "an event without a type")
            kind = event["type"]
            handler = getattr(self, "on_" + kind, None)
            if handler is None:
                self.fail(f"unknown event type {kind!r}")
            if kind not in ("message_start", "error"):
                self.expect(self.started, f"{kind} before message_start")
            handler(event)
        self.at = len(events)
        self.expect(self.ended, "the stream ends without message_stop or error")
        # A complete answer's tool inputs are JSON objects; a cut one (max_tokens, error) may not be.
        if self.stop_reason is not None and self.stop_reason != "max_tokens":
            for index, pieces in self.json.items():
                raw = "".join(pieces)
                if raw:
                    try:
                        value = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        self.fail(f"tool input of block {index} is not JSON: {raw!r}")
                    self.expect(isinstance(value, dict), f"tool input of block {index} is not an object")

    # ------------------------------------------------------------------ events

    def on_message_start(self, event: dict) -> None:
        self.expect(not self.started, "a second message_start")
        self.started = True
        message = event.get("message")
        self.expect(isinstance(message, dict), "message_start without a message")
        self.expect(isinstance(message.get("id"), str) and message["id"].startswith("msg_"), "message id is not msg_…")
        self.expect(message.get("type") == "message", "message.type is not 'message'")
        self.expect(message.get("role") == "assistant", "message.role is not 'assistant'")
        self.expect(isinstance(message.get("model"), str) and message["model"], "message.model missing")
        self.expect(message.get("content") == [], "message_start content is not []")
        self.expect(message.get("stop_reason") is None, "message_start stop_reason is not null")
        self.expect(message.get("stop_sequence") is None, "message_start stop_sequence is not null")
        usage = message.get("usage")
        self.expect(isinstance(usage, dict), "message_start without usage")
        self.expect(_is_int(usage.get("input_tokens")), "message_start usage.input_tokens is not an integer")
        self.expect(_is_int(usage.get("output_tokens")), "message_start usage.output_tokens is not an integer")

    def on_ping(self, event: dict) -> None:
        pass

    def on_content_block_start(self, event: dict) -> None:
        self.expect(self.open is None, f"content_block_start while block {self.open} is open")
        self.expect(self.stop_reason is None, "content_block_start after message_delta")
        index = event.get("index")
        self.expect(index == self.next_index, f"block index {index}, expected {self.next_index}")
        block = event.get("content_block")
        self.expect(isinstance(block, dict), "content_block_start without content_block")
        btype = block.get("type")
        if btype == "text":
            self.expect(block.get("text") == "", "a text block must start empty")
        elif btype == "thinking":
            self.expect(block.get("thinking") == "", "a thinking block must start empty")
            self.expect(isinstance(block.get("signature"), str), "a thinking block needs a string signature")
        elif btype in ("tool_use", "server_tool_use"):
            tool_id = block.get("id")
            self.expect(isinstance(tool_id, str) and bool(TOOL_ID.match(tool_id)), f"bad tool id {tool_id!r}")
            self.expect(isinstance(block.get("name"), str) and bool(block["name"]), "a tool block without a name")
            self.expect(block.get("input") == {}, "a tool block must start with input {}")
            self.json[self.next_index] = []
        elif btype not in _COMPLETE_BLOCKS:
            self.fail(f"unknown content block type {btype!r}")
        self.open = self.next_index
        self.open_type = btype
        self.signed = False
        self.next_index += 1

    def on_content_block_delta(self, event: dict) -> None:
        index = event.get("index")
        self.expect(self.open is not None, f"content_block_delta for block {index} while no block is open")
        self.expect(index == self.open, f"content_block_delta for block {index} while block {self.open} is open")
        delta = event.get("delta")
        self.expect(isinstance(delta, dict), "content_block_delta without delta")
        fits = _DELTAS.get(self.open_type or "", {})
        dtype = delta.get("type")
        self.expect(dtype in fits, f"{dtype} inside a {self.open_type} block")
        key = fits[dtype]
        if dtype == "citations_delta":
            self.expect(isinstance(delta.get(key), dict), "citations_delta without a citation")
        else:
            self.expect(isinstance(delta.get(key), str), f"{dtype}.{key} is not a string")
        self.expect(not self.signed, f"{dtype} after the block's signature_delta")
        if dtype == "signature_delta":
            self.signed = True
        if dtype == "input_json_delta":
            self.json[index].append(delta["partial_json"])

    def on_content_block_stop(self, event: dict) -> None:
        index = event.get("index")
        self.expect(self.open is not None, f"content_block_stop for block {index} while no block is open")
        self.expect(index == self.open, f"content_block_stop for block {index} while block {self.open} is open")
        self.open = None
        self.open_type = None

    def on_message_delta(self, event: dict) -> None:
        self.expect(self.open is None, f"message_delta while block {self.open} is open")
        delta = event.get("delta")
        self.expect(isinstance(delta, dict), "message_delta without delta")
        reason = delta.get("stop_reason")
        self.expect(reason in STOP_REASONS, f"invalid stop_reason {reason!r}")
        sequence = delta.get("stop_sequence")
        if reason == "stop_sequence":
            self.expect(isinstance(sequence, str), "stop_reason stop_sequence without the sequence")
        else:
            self.expect(sequence is None, f"stop_sequence {sequence!r} with stop_reason {reason}")
        usage = event.get("usage")
        self.expect(isinstance(usage, dict), "message_delta without usage")
        self.expect(_is_int(usage.get("output_tokens")), "message_delta usage.output_tokens is not an integer")
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
            self.expect(usage.get(key) is None or _is_int(usage[key]), f"message_delta usage.{key} is not an integer")
        self.stop_reason = reason

    def on_message_stop(self, event: dict) -> None:
        self.expect(self.stop_reason is not None, "message_stop without a message_delta before it")
        self.ended = True

    def on_error(self, event: dict) -> None:
        error = event.get("error")
        self.expect(isinstance(error, dict), "error event without an error object")
        self.expect(error.get("type") in ERROR_TYPES, f"unknown error type {error.get('type')!r}")
        self.expect(isinstance(error.get("message"), str), "error without a message")
        self.ended = True
