"""The Messages API request as the gateway serves it: validation and small shared helpers.

The request stays the JSON object the client sent (a dict): native backends get it back
with unknown fields untouched, and translators read it without a copy into models.
`validate_request` checks every field the API documents, in the API's own error style
(`messages.1.content.0.text: Field required`), and accepts what it does not know.

The served API is slightly wider than Anthropic's (docs/protocol-mapping.md §0):
`max_tokens` is optional, `temperature` goes up to 2 and `metadata` takes any keys.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, Protocol, Required, TypedDict, cast

from gateway.errors import InvalidRequest

# ---------------------------------------------------------------------------- the wire types
# The shapes below are for the type checker only: at run time each is the plain dict that
# orjson made or the gateway built (no copy, no check beyond `validate_request`'s). Fields
# a client may send that the gateway never reads are left out or typed `Any`; unknown
# fields stay in the dict all the same.

JsonObject = dict[str, Any]  # a parsed JSON object whose shape the gateway does not rely on


class ContentBlock(TypedDict, total=False):
    """Any content block: one shape with every block type's fields, not a union per type,
    because the translators switch on `type` held in a local, which a union cannot be
    narrowed through."""

    type: Required[str]
    text: str  # text
    thinking: str  # thinking
    signature: str  # thinking
    data: str  # redacted_thinking
    id: str  # tool_use
    name: str  # tool_use
    input: JsonObject  # tool_use
    tool_use_id: str  # tool_result
    content: str | list[ContentBlock]  # tool_result, search_result
    is_error: bool | None  # tool_result
    # image and document: the source object; search_result: the source's URL, a string.
    source: Any
    title: str | None  # document, search_result
    citations: list[Any]
    cache_control: Any


class Message(TypedDict):
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


# A `system` value: a string, a list of text blocks, or (leniently) one block on its own.
SystemPrompt = str | ContentBlock | list[ContentBlock]


class Tool(TypedDict, total=False):
    type: str | None  # None or "custom" for a client tool; server tools by their type name
    name: Required[str]
    description: str
    input_schema: JsonObject
    strict: Any  # passed on only when it is a bool


class ToolChoice(TypedDict, total=False):
    type: Required[Literal["auto", "any", "tool", "none"]]
    name: str
    disable_parallel_tool_use: bool | None


class Thinking(TypedDict, total=False):
    type: Required[Literal["enabled", "disabled", "adaptive"]]
    budget_tokens: int


class OutputFormat(TypedDict):
    type: Literal["json_schema"]
    schema: JsonObject


class OutputConfig(TypedDict, total=False):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None
    format: OutputFormat | None


class MessagesRequest(TypedDict, total=False):
    """A Messages request body once `validate_request` has accepted it."""

    model: Required[str]
    messages: Required[list[Message]]
    max_tokens: int | None
    system: SystemPrompt | None
    stop_sequences: list[str] | None
    stream: bool | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    metadata: JsonObject | None  # any keys; `user_id`, when there, a string
    tools: list[Tool] | None
    tool_choice: ToolChoice | None
    thinking: Thinking | None
    output_config: OutputConfig | None


class Usage(TypedDict):
    """The token counts of a Messages answer, as the gateway reports a translated one."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    server_tool_use: NotRequired[JsonObject]


class MessagesResponse(TypedDict):
    """A non-streamed Messages answer."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[ContentBlock]
    stop_reason: str | None
    stop_sequence: str | None
    usage: Usage


class EventDelta(TypedDict, total=False):
    """The `delta` of a content_block_delta (with its `type`) or a message_delta (without)."""

    type: str
    text: str
    thinking: str
    signature: str
    partial_json: str
    stop_reason: str | None
    stop_sequence: str | None


class ErrorObject(TypedDict):
    type: str
    message: str


class StreamEvent(TypedDict, total=False):
    """Any Messages stream event, one shape for all (as `ContentBlock`, for the same reason)."""

    type: Required[str]
    message: MessagesResponse  # message_start
    index: int  # content_block_*
    content_block: ContentBlock  # content_block_start
    delta: EventDelta  # content_block_delta, message_delta
    usage: Usage  # message_delta
    error: ErrorObject  # error


# Fields the API accepts for portability and never uses for generation: accepted,
# dropped for translated backends, forwarded to native ones where their `passthrough`
# policy lets them through (gateway/passthrough.py).
COMPAT_FIELDS = frozenset(
    {"service_tier", "container", "inference_geo", "cache_control", "context_management", "mcp_servers"}
)
KNOWN_FIELDS = (
    frozenset(
        {
            "model",
            "messages",
            "max_tokens",
            "system",
            "stop_sequences",
            "stream",
            "temperature",
            "top_p",
            "top_k",
            "metadata",
            "tools",
            "tool_choice",
            "thinking",
            "output_config",
        }
    )
    | COMPAT_FIELDS
)

ROLES = ("user", "assistant", "system")
EFFORTS = ("low", "medium", "high", "xhigh", "max")
TOOL_CHOICES = ("auto", "any", "tool", "none")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
MIN_THINKING_BUDGET = 1024
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
# The model name is echoed into 404 bodies and the access log: a body-sized one must not be.
MAX_MODEL_NAME = 256
# The most `max_tokens` may ask for: several times any model's output today (128000),
# and bounded so that no number a client sends is carried on into admission's arithmetic
# or an upstream's integer parser (`10000000000000000000` overflows both).
MAX_TOKENS = 1_000_000


class RequestCaps(Protocol):
    """The bounds on one request's shape (the `server:` settings of the same names): past
    them a request is refused before any work that grows with its size."""

    @property
    def max_messages(self) -> int: ...

    @property
    def max_blocks_per_message(self) -> int: ...

    @property
    def max_json_depth(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Caps:
    """`RequestCaps` as plain values: the defaults (the settings' too), or a caller's own."""

    # Anthropic's own cap on messages. Real clients send a few blocks a message (Claude
    # Code: one per parallel tool result).
    max_messages: int = 100_000
    max_blocks_per_message: int = 10_000
    # Real requests nest about a dozen levels (Claude Code's tool schemas); the gateway's
    # translation adds one, and orjson encodes at most 254.
    max_json_depth: int = 128


DEFAULT_CAPS = Caps()


def new_message_id() -> str:
    # Unique, not secret (as request ids): no system call per message.
    return f"msg_{random.getrandbits(96):024x}"


def _fail(path: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{path}: {problem}" if path else problem)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require_str(obj: JsonObject, key: str, path: str) -> str:
    if key not in obj:
        raise _fail(f"{path}.{key}", "Field required")
    value = obj[key]
    if not isinstance(value, str):
        raise _fail(f"{path}.{key}", "Input should be a valid string")
    return value


def _require_object(value: Any, path: str) -> JsonObject:
    if not isinstance(value, dict):
        raise _fail(path, "Input should be a valid dictionary or object")
    return value


def _require_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(path, "Input should be a valid list")
    return value


def _number_in(body: JsonObject, key: str, low: float, high: float, *, integer: bool = False) -> None:
    if key not in body or body[key] is None:
        return
    value = body[key]
    if integer and not _is_int(value):
        raise _fail(key, "Input should be a valid integer")
    if not _is_number(value):
        raise _fail(key, "Input should be a valid number")
    if value < low or value > high:
        raise _fail(key, f"Input should be between {low:g} and {high:g}")


def validate_request(body: Any, caps: RequestCaps = DEFAULT_CAPS) -> MessagesRequest:
    """Check a Messages request body (or a count_tokens body, its subset); return it
    unchanged or raise `InvalidRequest`. Every check is linear in the body's size."""
    body = _require_object(body, "")
    model = body.get("model")
    if model is None:
        raise _fail("model", "Field required")
    if not isinstance(model, str) or not model:
        raise _fail("model", "Input should be a non-empty string")
    if len(model) > MAX_MODEL_NAME:
        raise _fail("model", f"String should have at most {MAX_MODEL_NAME} characters")
    if "messages" not in body:
        raise _fail("messages", "Field required")
    messages = _require_list(body["messages"], "messages")
    if not messages:
        raise _fail("messages", "List should have at least 1 item")
    if len(messages) > caps.max_messages:
        raise _fail(
            "messages", f"{len(messages)} messages, more than the limit of {caps.max_messages} (server.max_messages)"
        )
    _check_depth(body, caps.max_json_depth)
    for i, message in enumerate(messages):
        _validate_message(message, f"messages.{i}", caps.max_blocks_per_message)

    if "max_tokens" in body and body["max_tokens"] is not None:
        if not _is_int(body["max_tokens"]):
            raise _fail("max_tokens", "Input should be a valid integer")
        if body["max_tokens"] < 1:
            raise _fail("max_tokens", "Input should be greater than or equal to 1")
        if body["max_tokens"] > MAX_TOKENS:
            raise _fail("max_tokens", f"Input should be less than or equal to {MAX_TOKENS}")
    if "system" in body and body["system"] is not None:
        _validate_system(body["system"])
    if "stop_sequences" in body and body["stop_sequences"] is not None:
        for i, seq in enumerate(_require_list(body["stop_sequences"], "stop_sequences")):
            if not isinstance(seq, str) or not seq:
                raise _fail(f"stop_sequences.{i}", "Input should be a non-empty string")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise _fail("stream", "Input should be a valid boolean")
    _number_in(body, "temperature", 0, 2)
    _number_in(body, "top_p", 0, 1)
    _number_in(body, "top_k", 0, 100, integer=True)
    if "metadata" in body and body["metadata"] is not None:
        metadata = _require_object(body["metadata"], "metadata")
        user_id = metadata.get("user_id")
        if user_id is not None and not isinstance(user_id, str):
            raise _fail("metadata.user_id", "Input should be a valid string")
    if "tools" in body and body["tools"] is not None:
        for i, tool in enumerate(_require_list(body["tools"], "tools")):
            _validate_tool(tool, f"tools.{i}")
    if "tool_choice" in body and body["tool_choice"] is not None:
        _validate_tool_choice(body["tool_choice"])
    if "thinking" in body and body["thinking"] is not None:
        _validate_thinking(body["thinking"], body.get("max_tokens"))
    if "output_config" in body and body["output_config"] is not None:
        _validate_output_config(body["output_config"])
    return cast(MessagesRequest, body)


def _validate_system(system: Any) -> None:
    if isinstance(system, str):
        return
    if isinstance(system, dict):  # leniently, one text block on its own
        _validate_text_block(system, "system")
        return
    for i, block in enumerate(_require_list(system, "system")):
        _validate_text_block(_require_object(block, f"system.{i}"), f"system.{i}")


def _validate_text_block(block: JsonObject, path: str) -> None:
    if block.get("type") != "text":
        raise _fail(f"{path}.type", "Input should be 'text'")
    _require_str(block, "text", path)


_NESTS = frozenset({dict, list})  # what parsed JSON nests in (orjson makes exactly these)


def _check_depth(body: JsonObject, limit: int) -> None:
    """Refuse JSON nested deeper than `limit` levels (the body is level 1), wherever it
    is: a schema, a tool input, metadata, a field only native backends read. What the
    gateway then does with a request (translate it, estimate it, encode it again for the
    upstream) stays within orjson's encoding depth and Python's recursion limit.
    One level at a time, each value looked at once, no recursion."""
    level: list[Any] = [body]
    for _ in range(limit):
        level = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if type(child) in _NESTS
        ]
        if not level:
            return
    raise _fail(_path_below(body, limit), f"JSON nested more than {limit} levels deep (server.max_json_depth)")


# A step of a path to a nested value: its key (or list index) and the step to its parent.
_Link = tuple[Any, "_Link | None"]


def _path_below(body: JsonObject, depth: int) -> str:
    """The first few steps of a path to a value nested `depth` levels below `body` (only
    on a refusal: the walk keeps a link to its parent for every container)."""
    level: list[tuple[Any, _Link | None]] = [(body, None)]
    for _ in range(depth):
        level = [
            (child, (key, link))
            for node, link in level
            for key, child in (node.items() if type(node) is dict else enumerate(node))
            if type(child) in _NESTS
        ]
    keys: list[str] = []
    link = level[0][1]
    while link is not None:
        key, link = link
        keys.append(str(key))
    keys.reverse()
    shown = ".".join(keys[:5])
    return shown + "..." if len(keys) > 5 else shown


def _require_blocks(content: Any, path: str, cap: int) -> list[Any]:
    blocks = _require_list(content, path)
    if len(blocks) > cap:
        raise _fail(path, f"{len(blocks)} content blocks, more than the limit of {cap} (server.max_blocks_per_message)")
    return blocks


def _validate_message(message: Any, path: str, max_blocks: int) -> None:
    message = _require_object(message, path)
    role = message.get("role")
    if role is None:
        raise _fail(f"{path}.role", "Field required")
    if role not in ROLES:
        raise _fail(f"{path}.role", "Input should be 'user', 'assistant' or 'system'")
    if "content" not in message:
        raise _fail(f"{path}.content", "Field required")
    content = message["content"]
    if isinstance(content, str):
        return
    for j, block in enumerate(_require_blocks(content, f"{path}.content", max_blocks)):
        _validate_block(block, f"{path}.content.{j}", max_blocks)


def _validate_block(block: Any, path: str, max_blocks: int) -> None:
    block = _require_object(block, path)
    kind = block.get("type")
    if not isinstance(kind, str):
        raise _fail(f"{path}.type", "Field required")
    if kind == "text":
        _require_str(block, "text", path)
    elif kind == "image":
        _validate_image(block, path)
    elif kind == "document":
        source = _require_object(block.get("source"), f"{path}.source")
        if not isinstance(source.get("type"), str):
            raise _fail(f"{path}.source.type", "Field required")
    elif kind == "tool_use":
        _require_str(block, "id", path)
        _require_str(block, "name", path)
        if "input" not in block:
            raise _fail(f"{path}.input", "Field required")
        _require_object(block["input"], f"{path}.input")
    elif kind == "tool_result":
        _require_str(block, "tool_use_id", path)
        content = block.get("content")
        if content is not None and not isinstance(content, str):
            for k, inner in enumerate(_require_blocks(content, f"{path}.content", max_blocks)):
                inner = _require_object(inner, f"{path}.content.{k}")
                if inner.get("type") == "text":
                    _require_str(inner, "text", f"{path}.content.{k}")
                elif inner.get("type") == "image":
                    _validate_image(inner, f"{path}.content.{k}")
                elif not isinstance(inner.get("type"), str):
                    raise _fail(f"{path}.content.{k}.type", "Field required")
        if "is_error" in block and block["is_error"] is not None and not isinstance(block["is_error"], bool):
            raise _fail(f"{path}.is_error", "Input should be a valid boolean")
    elif kind == "thinking":
        _require_str(block, "thinking", path)
        if "signature" in block and not isinstance(block["signature"], str):
            raise _fail(f"{path}.signature", "Input should be a valid string")
    elif kind == "redacted_thinking":
        _require_str(block, "data", path)
    # Other block types (server tool history, search results, newer additions) are
    # accepted here; a backend that cannot carry them says so by name.


def _validate_image(block: JsonObject, path: str) -> None:
    source = _require_object(block.get("source"), f"{path}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type = _require_str(source, "media_type", f"{path}.source")
        if media_type not in IMAGE_MEDIA_TYPES:
            raise _fail(
                f"{path}.source.media_type", "Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
            )
        _require_str(source, "data", f"{path}.source")
    elif kind == "url":
        _require_str(source, "url", f"{path}.source")
    elif kind is None:
        raise _fail(f"{path}.source.type", "Field required")
    # `file` sources and later kinds pass to native backends; translators refuse them by name.


def _validate_tool(tool: Any, path: str) -> None:
    tool = _require_object(tool, path)
    kind = tool.get("type")
    name = _require_str(tool, "name", path)
    if kind in (None, "custom"):
        if not TOOL_NAME.match(name):
            raise _fail(f"{path}.name", "String should match pattern '^[a-zA-Z0-9_-]{1,128}$'")
        if "input_schema" not in tool:
            raise _fail(f"{path}.input_schema", "Field required")
        _require_object(tool["input_schema"], f"{path}.input_schema")
    elif not isinstance(kind, str):
        raise _fail(f"{path}.type", "Input should be a valid string")


def _validate_tool_choice(choice: Any) -> None:
    choice = _require_object(choice, "tool_choice")
    kind = choice.get("type")
    if kind not in TOOL_CHOICES:
        raise _fail("tool_choice.type", "Input should be 'auto', 'any', 'tool' or 'none'")
    if kind == "tool":
        _require_str(choice, "name", "tool_choice")
    dp = choice.get("disable_parallel_tool_use")
    if dp is not None and not isinstance(dp, bool):
        raise _fail("tool_choice.disable_parallel_tool_use", "Input should be a valid boolean")


def _validate_thinking(thinking: Any, max_tokens: Any) -> None:
    thinking = _require_object(thinking, "thinking")
    kind = thinking.get("type")
    if kind == "enabled":
        if "budget_tokens" not in thinking:
            raise _fail("thinking.enabled.budget_tokens", "Field required")
        budget = thinking["budget_tokens"]
        if not _is_int(budget):
            raise _fail("thinking.enabled.budget_tokens", "Input should be a valid integer")
        if budget < MIN_THINKING_BUDGET:
            raise _fail(
                "thinking.enabled.budget_tokens", f"Input should be greater than or equal to {MIN_THINKING_BUDGET}"
            )
        if _is_int(max_tokens) and max_tokens <= budget:
            raise InvalidRequest("`max_tokens` must be greater than `thinking.budget_tokens`")
    elif kind in ("disabled", "adaptive"):
        if "budget_tokens" in thinking:
            raise _fail(f"thinking.{kind}.budget_tokens", "Extra inputs are not permitted")
    else:
        raise _fail("thinking.type", "Input should be 'enabled', 'disabled' or 'adaptive'")


def _validate_output_config(config: Any) -> None:
    config = _require_object(config, "output_config")
    effort = config.get("effort")
    if effort is not None and effort not in EFFORTS:
        raise _fail("output_config.effort", "Input should be 'low', 'medium', 'high', 'xhigh' or 'max'")
    fmt = config.get("format")
    if fmt is not None:
        fmt = _require_object(fmt, "output_config.format")
        if fmt.get("type") != "json_schema":
            raise _fail("output_config.format.type", "Input should be 'json_schema'")
        if "schema" not in fmt:
            raise _fail("output_config.format.schema", "Field required")
        _require_object(fmt["schema"], "output_config.format.schema")


def unknown_fields(body: Mapping[str, Any]) -> list[str]:
    """Top-level fields the API does not document (kept for native backends, logged)."""
    return [key for key in body if key not in KNOWN_FIELDS]


def system_text(system: SystemPrompt | None) -> list[str]:
    """The text pieces of a `system` value (string, block list or a single block)."""
    if system is None:
        return []
    if isinstance(system, str):
        return [system]
    if isinstance(system, dict):
        return [system.get("text", "")]
    return [block.get("text", "") for block in system]
