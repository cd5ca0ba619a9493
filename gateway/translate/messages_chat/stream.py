"""Chat Completions stream chunks → Messages stream events: one state machine per request. Pure.

The pump (`streaming.py`) owns the sockets and the clock; it calls, in order:

    t = ChatStreamTranslator(call, input_tokens=estimate)
    t.start()              once the upstream answered 200        → [message_start]
    t.feed(chunk)          for every parsed upstream `data:`     → zero or more events
    t.finish()             at `[DONE]`, or clean EOF after a finish_reason
    t.fail(error)          on anything else (raised by feed/finish, EOF too early, disconnect)

and writes every returned event. After `finish()` or `fail()` the translator is FINISHED
and returns nothing more. Malformed upstream input raises `UpstreamProtocolError` (an
`error` chunk or a failure `finish_reason` raises the mapped error); the pump answers it
with `fail()`, so nothing is ever skipped silently. Once `feed()` has raised, `fail()` is
the only meaningful next call (events of the failing chunk are not returned). `finish()`
decides everything that can fail before producing any event, so if it raises the pump can
still `fail()`. `feed()` before `start()` sends `message_start` first.

What the client gets obeys the grammar the SDK accumulators need (docs/protocol-mapping.md §2.3;
P-numbers are the pitfalls listed there): block indexes 0, 1, 2… in start order, exactly
one block open at a time, no delta after its block's stop. Upstream pieces are placed in
blocks like this (§6.4):

- One chunk is split in a fixed order: reasoning → text (and `refusal`) → tool calls.
  Empty strings open nothing (P4), nor does `tool_calls: []`.
- Reasoning (`reasoning_content`, vLLM's `reasoning`, else the text of OpenRouter
  `reasoning_details` / LiteLLM `thinking_blocks`) goes to a `thinking` block. A signature
  is sent only when the upstream gives one, as `signature_delta` just before that block's
  stop; none is ever invented.
- Tool calls are keyed by upstream `index`, and by `id` when a server reuses one index
  for calls with distinct ids (P7). A tool block starts only once its name is known;
  fragments that come earlier are held (P5). Tool blocks start in the order the upstream
  first mentioned the calls. The open tool streams its fragments live; fragments for
  other calls are held (P6) until the open tool is done: its arguments form a complete
  JSON value (nothing valid can follow), text or reasoning arrives, or the stream ends.
  Then the next call starts with everything held for it in one `input_json_delta`, and
  streams live from there.
- `finish_reason` is recorded, not sent: usage often arrives later (P9), so the single
  `message_delta` is built by `finish()`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from gateway.errors import GatewayError, Overloaded, UpstreamProtocolError
from gateway.protocols.messages import (
    ContentBlock,
    ErrorObject,
    EventDelta,
    JsonObject,
    StreamEvent,
    Usage,
    new_message_id,
)
from gateway.translate.estimate import estimate_output_tokens
from gateway.translate.messages_chat.dialect import client_tool_id
from gateway.translate.messages_chat.request import ChatCall
from gateway.translate.messages_chat.response import (
    find_usage,
    reasoning_text,
    stop_reason,
    synthetic_tool_id,
    usage_from_chat,
)
from gateway.translate.upstream_errors import upstream_message


class State(enum.Enum):
    NOT_STARTED = "not_started"  # message_start not sent yet
    BETWEEN_BLOCKS = "between_blocks"  # started; no block open
    OPEN = "open"  # one block open (its kind in `BlockKind`)
    FINISHED = "finished"  # message_stop or error sent; nothing more


class BlockKind(enum.Enum):
    THINKING = "thinking"
    TEXT = "text"
    TOOL_USE = "tool_use"


class _ToolState(enum.Enum):
    HELD = "held"  # not started: no name yet, or another block holds the slot
    OPEN = "open"
    CLOSED = "closed"


# What can move the end of a JSON value: quotes, backslashes (inside strings), brackets.
_STRUCTURAL = re.compile(r'["\\\[\]{}]')
_JSON_WHITESPACE = " \t\n\r"


class _ValueEnd:
    """Whether a call's arguments so far are one whole JSON object or array, so nothing
    valid can follow: told from the fragments as they come, each character read once and
    the text parsed once, when its outermost bracket closes. (Joining and parsing every
    fragment again after each new one, while another call waited, was quadratic in the
    arguments' length.)"""

    __slots__ = ("_read", "_depth", "_in_string", "_escaped", "_closed", "_whole")

    def __init__(self) -> None:
        self._read = 0  # fragments read so far
        self._depth = 0
        self._in_string = False
        self._escaped = False  # the last fragment read ended with a backslash in a string
        self._closed = False  # the outermost bracket closed (or one closed that never opened)
        self._whole = False

    def whole(self, fragments: list[str]) -> bool:
        """`fragments`: the call's arguments so far; those read at an earlier call are not read again."""
        while self._read < len(fragments):
            fragment = fragments[self._read]
            self._read += 1
            if self._closed:
                if fragment.strip(_JSON_WHITESPACE):  # text after the value: never whole again
                    self._whole = False
                continue
            end = self._closing(fragment)
            if end is not None:
                self._closed = True
                rest = fragment[end:]
                text = "".join(fragments[: self._read - 1]) + fragment[:end]
                self._whole = not rest.strip(_JSON_WHITESPACE) and _parses(text)
        return self._whole

    def _closing(self, fragment: str) -> int | None:
        """Just past the bracket in `fragment` that closes the outermost value, if it is there."""
        escaped_at = 0 if self._escaped else -1  # where the character a backslash escapes is
        for match in _STRUCTURAL.finditer(fragment):
            at = match.start()
            if at == escaped_at:
                continue
            char = match.group()
            if self._in_string:
                if char == '"':
                    self._in_string = False
                elif char == "\\":
                    escaped_at = at + 1
            elif char == '"':
                self._in_string = True
            elif char == "{" or char == "[":
                self._depth += 1
            elif char == "}" or char == "]":
                self._depth -= 1
                if self._depth <= 0:  # below 0: a bracket that never opened, not JSON whatever follows
                    return at + 1
        self._escaped = escaped_at == len(fragment)
        return None


def _parses(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


@dataclass(slots=True, eq=False)
class _Tool:
    ordinal: int  # order of first appearance upstream
    upstream_id: str | None = None
    name: str | None = None  # as the upstream sent it (maybe shortened by the request translation)
    args: list[str] = field(default_factory=list)  # every fragment so far
    held: list[str] = field(default_factory=list)  # fragments not sent yet
    state: _ToolState = _ToolState.HELD
    end: _ValueEnd = field(default_factory=_ValueEnd)  # where `args` closes


_OVERLOAD_TYPES = frozenset({"server_error", "overloaded", "overloaded_error"})


class ChatStreamTranslator:
    """One streamed Chat Completions answer → Messages events. Not shared between requests."""

    def __init__(self, call: ChatCall, *, message_id: str | None = None, input_tokens: int = 0) -> None:
        self._call = call
        self._message_id = message_id or new_message_id()
        self._input_estimate = input_tokens
        self._output_chars = 0
        self._state = State.NOT_STARTED
        self._started = False
        self._emitted = 0
        # the open block
        self._kind: BlockKind | None = None
        self._index = -1
        self._open_tool: _Tool | None = None
        self._next_index = 0
        self._signature: str | None = None  # for the open thinking block
        # tool calls, in order of first appearance; those from `_next_tool` on are not started
        self._tools: list[_Tool] = []
        self._next_tool = 0
        self._by_index: dict[int, _Tool] = {}
        self._by_id: dict[str, _Tool] = {}
        self._last_tool: _Tool | None = None
        # the end
        self._finish_reason: str | None = None
        self._matched: Any = None  # vLLM `stop_reason` / SGLang `matched_stop`
        self._refused = False
        self._usage: Usage | None = None  # Messages usage, once the upstream reported any
        self._stop_reason: str | None = None
        self._stop_sequence: str | None = None

    # ------------------------------------------------------------------ read-only state

    @property
    def state(self) -> State:
        return self._state

    @property
    def open_block(self) -> BlockKind | None:
        return self._kind if self._state is State.OPEN else None

    @property
    def started(self) -> bool:
        return self._started

    @property
    def finished(self) -> bool:
        return self._state is State.FINISHED

    @property
    def events_emitted(self) -> int:
        return self._emitted

    @property
    def usage(self) -> Usage:
        """Messages usage so far: the upstream's, or (`usage_reported` False) an estimate:
        the input estimate given at creation and the streamed output's length."""
        if self._usage is not None:
            return self._usage.copy()
        return {
            "input_tokens": self._input_estimate,
            "output_tokens": estimate_output_tokens(self._output_chars),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }

    @property
    def usage_reported(self) -> bool:
        return self._usage is not None

    @property
    def finish_reason(self) -> str | None:
        """The upstream's raw `finish_reason`, once one came. At EOF without `[DONE]` the pump
        calls `finish()` if this is set and `fail()` otherwise (P16)."""
        return self._finish_reason

    @property
    def stop_reason(self) -> str | None:
        """Set by `finish()`; None before it and after `fail()`."""
        return self._stop_reason

    @property
    def stop_sequence(self) -> str | None:
        return self._stop_sequence

    # ------------------------------------------------------------------ the interface

    def start(self) -> list[StreamEvent]:
        if self._state is not State.NOT_STARTED:
            return []
        return self._done([self._message_start()])

    def feed(self, chunk: Any) -> list[StreamEvent]:
        if self._state is State.FINISHED:
            return []
        if not isinstance(chunk, dict):
            raise UpstreamProtocolError("upstream stream chunk is not a JSON object")
        if chunk.get("error") is not None or chunk.get("object") == "error":
            raise _chunk_error(chunk)
        choices = chunk.get("choices")
        if choices is None:
            choices = []
        if not isinstance(choices, list):
            raise UpstreamProtocolError("upstream stream chunk has `choices` that is not a list")
        out: list[StreamEvent] = []
        if self._state is State.NOT_STARTED:
            out.append(self._message_start())

        raw_usage = find_usage(chunk)
        if isinstance(raw_usage, dict) and ("prompt_tokens" in raw_usage or "completion_tokens" in raw_usage):
            self._usage = usage_from_chat(raw_usage)  # cumulative wherever it comes: the last one wins

        choice = _first_choice(choices)  # `choices: []` (usage, Azure filter results) ends here
        if choice is not None:
            delta = choice.get("delta")
            if delta is None:
                delta = {}
            if not isinstance(delta, dict):
                raise UpstreamProtocolError("upstream stream chunk has a `delta` that is not an object")
            self._delta(delta, out)  # before the finish_reason of the same chunk (P30)
            self._record_finish(choice)
        return self._done(out)

    def text_continuation(self, chunk: Any) -> str | None:
        """The text of a chunk that only continues the open text block (most chunks of a
        stream), the translator advanced exactly as `feed` would have for it: its one
        event is a `text_delta` of that text at the open block's `index`. None, with
        nothing changed, for any other chunk: then call `feed`."""
        if self._state is not State.OPEN or self._kind is not BlockKind.TEXT or type(chunk) is not dict:
            return None
        if chunk.get("usage") is not None or chunk.get("error") is not None or "x_groq" in chunk:
            return None
        choices = chunk.get("choices")
        if type(choices) is not list or len(choices) != 1:
            return None
        choice = choices[0]
        if type(choice) is not dict or choice.get("index", 0) != 0 or choice.get("finish_reason") is not None:
            return None
        if choice.get("stop_reason") is not None or choice.get("matched_stop") is not None:
            return None
        delta = choice.get("delta")
        if type(delta) is not dict or not delta.keys() <= _TEXT_ONLY:
            return None
        text = delta.get("content")
        if type(text) is not str or not text or chunk.get("object") == "error":
            return None
        self.continue_text(len(text))
        return text

    @property
    def text_open(self) -> bool:
        """A text block is open: a text-only chunk would only continue it."""
        return self._kind is BlockKind.TEXT and self._state is State.OPEN

    def continue_text(self, chars: int) -> None:
        """Advance as `feed` does for a chunk of `chars` characters that only continues the
        open text block (`text_open`; the caller writes its `text_delta`)."""
        self._emitted += 1
        if self._usage is None:
            self._output_chars += chars

    @property
    def index(self) -> int:
        """The open block's index."""
        return self._index

    def finish(self) -> list[StreamEvent]:
        if self._state is State.FINISHED:
            return []
        # Everything that can fail is decided before the first event is produced, so a
        # raise leaves the translator untouched and the pump can still `fail()`.
        for tool in self._tools[self._next_tool :]:
            if tool.name is None:
                raise UpstreamProtocolError("upstream tool call never got a function name")
        if self._refused:
            reason, sequence = "refusal", None
        else:
            reason, sequence = stop_reason(
                self._finish_reason,
                had_tool_use=bool(self._tools),
                matched=self._matched,
                stop_sequences=self._call.stop_sequences,
            )

        out: list[StreamEvent] = []
        if self._state is State.NOT_STARTED:
            out.append(self._message_start())
        self._close(out)
        while self._next_tool < len(self._tools):
            self._start_tool(self._tools[self._next_tool], out)
            self._close(out)
        usage = self.usage
        out.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": {
                    "output_tokens": usage["output_tokens"],
                    "input_tokens": usage["input_tokens"],
                    "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
                    "cache_read_input_tokens": usage["cache_read_input_tokens"],
                },
            }
        )
        out.append({"type": "message_stop"})
        self._stop_reason, self._stop_sequence = reason, sequence
        self._state = State.FINISHED
        return self._done(out)

    def fail(self, error: BaseException) -> list[StreamEvent]:
        """The closing `error` event. No block stop, no message_delta, nothing after it (P14, P15)."""
        if self._state is State.FINISHED:
            return []
        body: ErrorObject
        if isinstance(error, GatewayError):
            body = {"type": error.error_type, "message": error.message}
        else:
            body = {"type": "api_error", "message": "the upstream stream failed"}
        self._state = State.FINISHED
        self._kind = None
        self._open_tool = None
        return self._done([{"type": "error", "error": body}])

    # ------------------------------------------------------------------ one delta

    def _delta(self, delta: JsonObject, out: list[StreamEvent]) -> None:
        if delta.keys() <= _TEXT_ONLY:  # most chunks: text and nothing else to look for
            text = _text(delta.get("content"))
            if text:
                self._append(BlockKind.TEXT, "text_delta", "text", text, out)
            return
        thinking = reasoning_text(delta)
        extra_text, signature = _reasoning_extras(delta)
        if thinking is None:
            thinking = extra_text
        if thinking:
            self._append(BlockKind.THINKING, "thinking_delta", "thinking", thinking, out)
        if signature and self._kind is BlockKind.THINKING and self._state is State.OPEN:
            self._signature = signature  # sent right before this block's stop

        text = _text(delta.get("content"))
        if text:
            self._append(BlockKind.TEXT, "text_delta", "text", text, out)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self._refused = True
            self._append(BlockKind.TEXT, "text_delta", "text", refusal, out)

        calls = delta.get("tool_calls")
        if calls:
            if not isinstance(calls, list):
                raise UpstreamProtocolError("upstream stream chunk has `tool_calls` that is not a list")
            for call in calls:
                self._tool_fragment(call, out)

    def _record_finish(self, choice: JsonObject) -> None:
        finish = choice.get("finish_reason")
        if finish is not None:
            if not isinstance(finish, str):
                raise UpstreamProtocolError("upstream stream chunk has a `finish_reason` that is not a string")
            # Vendor reasons that mean failure (`error`, `abort`, …) raise here, not at the end.
            stop_reason(finish, had_tool_use=False)
            self._finish_reason = finish
        matched = choice.get("stop_reason")
        if matched is None:
            matched = choice.get("matched_stop")
        if matched is not None:
            self._matched = matched

    def _append(
        self, kind: BlockKind, delta_type: str, key: Literal["text", "thinking"], value: str, out: list[StreamEvent]
    ) -> None:
        if not (self._state is State.OPEN and self._kind is kind):
            self._close(out)
            if kind is BlockKind.THINKING:
                self._open(kind, {"type": "thinking", "thinking": "", "signature": ""}, out)
            else:
                self._open(kind, {"type": "text", "text": ""}, out)
        # Spelled per key: a checked TypedDict display takes literal keys only.
        delta: EventDelta = (
            {"type": delta_type, "text": value} if key == "text" else {"type": delta_type, "thinking": value}
        )
        out.append({"type": "content_block_delta", "index": self._index, "delta": delta})

    # ------------------------------------------------------------------ tool calls

    def _tool_fragment(self, call: Any, out: list[StreamEvent]) -> None:
        if not isinstance(call, dict):
            raise UpstreamProtocolError("upstream tool call delta is not an object")
        function = call.get("function")
        if function is None:
            function = {}
        if not isinstance(function, dict):
            raise UpstreamProtocolError("upstream tool call delta has a `function` that is not an object")
        name = function.get("name")
        if not (isinstance(name, str) and name):
            name = None
        arguments = function.get("arguments")
        if arguments is None:
            fragment = ""
        elif isinstance(arguments, str):
            fragment = arguments
        elif isinstance(arguments, dict):  # a few servers send the parsed object, whole
            fragment = orjson.dumps(arguments).decode()
        else:
            raise UpstreamProtocolError("upstream tool call arguments are not a string")

        tool = self._tool_for(call, empty=name is None and not fragment)
        if tool is None:
            return
        self._last_tool = tool
        if name is not None:
            if tool.name is None:
                tool.name = name
            elif name != tool.name:
                raise UpstreamProtocolError("upstream tool call changed its function name")

        if tool.state is _ToolState.OPEN:
            if fragment:
                tool.args.append(fragment)
                out.append(_json_delta(self._index, fragment))
        elif tool.state is _ToolState.CLOSED:
            if fragment.strip():
                raise UpstreamProtocolError("upstream sent arguments for a tool call after it had ended")
            return
        elif fragment:
            tool.args.append(fragment)
            tool.held.append(fragment)
        if self._next_tool < len(self._tools):
            self._advance(out)

    def _tool_for(self, call: JsonObject, *, empty: bool) -> _Tool | None:
        """The call a fragment belongs to: by index, split by id when an index is reused (P7)."""
        index = call.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = None
        upstream_id = call.get("id")
        if not (isinstance(upstream_id, str) and upstream_id):
            upstream_id = None

        if upstream_id is not None:
            tool = self._by_id.get(upstream_id)
            if tool is None:
                current = self._by_index.get(index) if index is not None else None
                if current is not None and current.upstream_id is None and current.state is not _ToolState.CLOSED:
                    tool = current  # the id came after the first fragment
                else:
                    tool = self._new_tool()
                tool.upstream_id = upstream_id
                self._by_id[upstream_id] = tool
            if index is not None:
                self._by_index[index] = tool
            return tool
        if index is not None:
            tool = self._by_index.get(index)
            if tool is None and not empty:
                tool = self._by_index[index] = self._new_tool()
            return tool
        if self._last_tool is None and not empty:
            return self._new_tool()
        return self._last_tool

    def _new_tool(self) -> _Tool:
        tool = _Tool(ordinal=len(self._tools))
        self._tools.append(tool)
        return tool

    def _advance(self, out: list[StreamEvent]) -> None:
        """Start waiting calls, in upstream order, while the slot can be given to them."""
        while self._next_tool < len(self._tools):
            waiting = self._tools[self._next_tool]
            if waiting.name is None:
                return
            if self._state is State.OPEN and self._kind is BlockKind.TOOL_USE:
                assert self._open_tool is not None
                if not self._open_tool.end.whole(self._open_tool.args):
                    return
            self._close(out)
            self._start_tool(waiting, out)

    def _start_tool(self, tool: _Tool, out: list[StreamEvent]) -> None:
        assert tool.name is not None and self._tools[self._next_tool] is tool
        self._next_tool += 1
        self._open(
            BlockKind.TOOL_USE,
            {
                "type": "tool_use",
                "id": client_tool_id(tool.upstream_id or synthetic_tool_id(self._message_id, tool.ordinal)),
                "name": self._call.client_tool_name(tool.name),
                "input": {},
            },
            out,
        )
        tool.state = _ToolState.OPEN
        self._open_tool = tool
        if tool.held:
            out.append(_json_delta(self._index, "".join(tool.held)))
            tool.held = []

    # ------------------------------------------------------------------ blocks

    def _open(self, kind: BlockKind, block: ContentBlock, out: list[StreamEvent]) -> None:
        self._index = self._next_index
        self._next_index += 1
        self._kind = kind
        self._state = State.OPEN
        self._signature = None
        out.append({"type": "content_block_start", "index": self._index, "content_block": block})

    def _close(self, out: list[StreamEvent]) -> None:
        if self._state is not State.OPEN:
            return
        if self._kind is BlockKind.THINKING and self._signature:
            out.append(
                {
                    "type": "content_block_delta",
                    "index": self._index,
                    "delta": {"type": "signature_delta", "signature": self._signature},
                }
            )
        self._signature = None
        if self._open_tool is not None:
            self._open_tool.state = _ToolState.CLOSED
            self._open_tool = None
        out.append({"type": "content_block_stop", "index": self._index})
        self._kind = None
        self._state = State.BETWEEN_BLOCKS

    def _message_start(self) -> StreamEvent:
        self._started = True
        self._state = State.BETWEEN_BLOCKS
        return {
            "type": "message_start",
            "message": {
                "id": self._message_id,
                "type": "message",
                "role": "assistant",
                "model": self._call.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": self._input_estimate,
                    "output_tokens": 0,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
            },
        }

    def _done(self, out: list[StreamEvent]) -> list[StreamEvent]:
        self._emitted += len(out)
        if self._usage is None:  # counted only while the upstream has reported no usage
            for event in out:
                if event["type"] == "content_block_delta":
                    delta = event["delta"]
                    self._output_chars += len(
                        delta.get("text") or delta.get("thinking") or delta.get("partial_json") or ""
                    )
        return out


# ---------------------------------------------------------------------- helpers


# Delta fields that carry nothing but text (`role` is always "assistant").
_TEXT_ONLY = frozenset({"content", "role"})


def _first_choice(choices: list[Any]) -> JsonObject | None:
    """Choice 0 only: the gateway never asks for `n`, and extra choices are not concatenated."""
    for choice in choices:
        if not isinstance(choice, dict):
            raise UpstreamProtocolError("upstream stream chunk has a choice that is not an object")
        if choice.get("index", 0) == 0:
            return choice
    return None


def _text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):  # content parts (Mistral and a few others)
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    raise UpstreamProtocolError("upstream stream chunk has `content` that is not a string")


def _reasoning_extras(delta: JsonObject) -> tuple[str, str | None]:
    """Reasoning text and signature from OpenRouter `reasoning_details` / LiteLLM `thinking_blocks`.

    The text is used only when the plain reasoning fields are absent (OpenRouter sends the
    same text in both); the signature is the last non-empty one.
    """
    texts: list[str] = []
    signature: str | None = None
    for key, kind, text_key in (
        ("reasoning_details", "reasoning.text", "text"),
        ("thinking_blocks", "thinking", "thinking"),
    ):
        items = delta.get(key)
        if not isinstance(items, list):
            continue
        for item in items:
            if not isinstance(item, dict) or item.get("type", kind) != kind:
                continue
            text = item.get(text_key)
            if isinstance(text, str) and text:
                texts.append(text)
            sig = item.get("signature")
            if isinstance(sig, str) and sig:
                signature = sig
    return "".join(texts), signature


def _json_delta(index: int, fragment: str) -> StreamEvent:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "input_json_delta", "partial_json": fragment},
    }


def _chunk_error(chunk: JsonObject) -> GatewayError:
    """An error object inside the stream (P15): overloaded when it says so, else api_error."""
    message = upstream_message(orjson.dumps(chunk)) or "the upstream stream failed"
    error = chunk.get("error")
    kind = error.get("type") if isinstance(error, dict) else chunk.get("type")
    if "overload" in message.lower() or kind in _OVERLOAD_TYPES:
        return Overloaded(message)
    return GatewayError(message)
