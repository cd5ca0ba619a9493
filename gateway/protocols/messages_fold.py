"""Messages stream events → the final Message, folded the way the SDK accumulators fold them.

Used to account a native pass-through stream (usage, stop reason) without re-encoding it,
and by tests to compare a translated stream with the non-streamed translation.

The rules are those of the Python SDK's `accumulate_event` (docs/protocol-mapping.md §2.3):
`message_start` gives the message; `content_block_start` *appends* (its `index` is not
read); deltas apply to `content[index]` when their type fits the block; tool input JSON
is the concatenation of the `input_json_delta`s, parsed at the block's stop (a block that
never stopped keeps `input: {}`, where the SDK shows a partial parse); ping and
unknown events are ignored; `message_delta` overwrites `stop_reason`, `stop_sequence`,
`stop_details` and `usage.output_tokens`, and the other usage counts only when non-null.

Text is collected in lists and joined when `.message` is read, so a long stream folds in
linear time. With `strict=True`, what the SDK would raise on (an event before
`message_start`, a delta for a block that does not exist, tool input that is not JSON,
a `message_delta` without usage) raises `ValueError`; otherwise it is skipped and noted
in `.problems`, because accounting must not fail on a stream the client got anyway.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.protocols.messages import JsonObject

_TOOL_BLOCKS = frozenset({"tool_use", "server_tool_use"})
_OPTIONAL_USAGE = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "server_tool_use",
    "output_tokens_details",
)


class MessageFold:
    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self.problems: list[str] = []
        self.error: JsonObject | None = None  # the `error` object of an `error` event
        self.stopped = False  # message_stop seen
        self._message: JsonObject | None = None
        self._content: list[JsonObject] = []
        self._texts: dict[int, list[str]] = {}  # block index → text/thinking pieces not yet joined
        self._json: dict[int, list[str]] = {}  # block index → input_json pieces not yet parsed

    @classmethod
    def of(cls, events: Any, *, strict: bool = False) -> MessageFold:
        fold = cls(strict=strict)
        for event in events:
            fold.feed(event)
        return fold

    # ------------------------------------------------------------------ reading

    @property
    def message(self) -> JsonObject | None:
        """The message so far (None before `message_start`)."""
        if self._message is None:
            return None
        for index, pieces in self._texts.items():
            block = self._content[index]
            key = "text" if block.get("type") == "text" else "thinking"
            block[key] = block.get(key, "") + "".join(pieces)
        self._texts.clear()
        return self._message

    @property
    def usage(self) -> JsonObject | None:
        message = self.message
        return None if message is None else message.get("usage")

    @property
    def stop_reason(self) -> str | None:
        message = self.message
        return None if message is None else message.get("stop_reason")

    # ------------------------------------------------------------------ folding

    def feed(self, event: JsonObject) -> None:
        kind = event.get("type")
        if kind == "error":
            self.error = event.get("error") if isinstance(event.get("error"), dict) else {}
            return
        if self._message is None:
            if kind == "message_start":
                self._start(event)
            elif kind != "ping":
                self._problem(f'unexpected event order: {kind} before "message_start"')
            return
        if kind == "content_block_start":
            block = dict(event["content_block"])
            if block.get("type") in _TOOL_BLOCKS:
                block["input"] = dict(block.get("input") or {})
            self._content.append(block)
        elif kind == "content_block_delta":
            self._delta(event)
        elif kind == "content_block_stop":
            index = event.get("index")
            if index in self._json:
                self._parse_input(index)
        elif kind == "message_delta":
            self._message_delta(event)
        elif kind == "message_stop":
            self.stopped = True
        # ping, a second message_start and unknown events: ignored, as by the SDK

    def _start(self, event: JsonObject) -> None:
        message = orjson.loads(orjson.dumps(event["message"]))  # a deep copy; events stay untouched
        self._content = message.setdefault("content", [])
        message["usage"] = dict(message.get("usage") or {})
        self._message = message

    def _delta(self, event: JsonObject) -> None:
        index = event.get("index")
        if not isinstance(index, int) or not 0 <= index < len(self._content):
            self._problem(f"content_block_delta for block {index}, which was never started")
            return
        block = self._content[index]
        delta = event.get("delta") or {}
        kind = delta.get("type")
        btype = block.get("type")
        if kind == "text_delta":
            if btype == "text":
                self._texts.setdefault(index, []).append(delta.get("text") or "")
        elif kind == "thinking_delta":
            if btype == "thinking":
                self._texts.setdefault(index, []).append(delta.get("thinking") or "")
        elif kind == "signature_delta":
            if btype == "thinking":
                block["signature"] = delta.get("signature") or ""
        elif kind == "input_json_delta":
            if btype in _TOOL_BLOCKS:
                self._json.setdefault(index, []).append(delta.get("partial_json") or "")
        elif kind == "citations_delta":
            if btype == "text":
                citations = block.get("citations") or []
                block["citations"] = [*citations, delta.get("citation")]

    def _parse_input(self, index: int) -> None:
        raw = "".join(self._json.pop(index))
        if not raw:
            return
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._problem(f"tool input of block {index} is not JSON: {raw[:200]!r}")
            return
        self._content[index]["input"] = value

    def _message_delta(self, event: JsonObject) -> None:
        assert self._message is not None
        delta = event.get("delta") or {}
        message = self._message
        message["stop_reason"] = delta.get("stop_reason")
        message["stop_sequence"] = delta.get("stop_sequence")
        if "stop_details" in delta or "stop_details" in message:
            message["stop_details"] = delta.get("stop_details")
        if delta.get("container") is not None:
            message["container"] = delta["container"]
        usage = event.get("usage")
        if not isinstance(usage, dict) or "output_tokens" not in usage:
            self._problem("message_delta without usage.output_tokens")
            return
        target = message["usage"]
        target["output_tokens"] = usage["output_tokens"]
        for key in _OPTIONAL_USAGE:
            if usage.get(key) is not None:
                target[key] = usage[key]

    def _problem(self, problem: str) -> None:
        if self.strict:
            raise ValueError(problem)
        self.problems.append(problem)
