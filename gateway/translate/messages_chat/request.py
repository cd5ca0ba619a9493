"""Messages request → Chat Completions request. Pure: no I/O, no clock, the input is not mutated.

A retry or a fallback runs `to_chat_request` again on the same request, so it must give
the same answer every time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import orjson

from gateway.errors import InvalidRequest
from gateway.protocols.messages import ContentBlock, JsonObject, MessagesRequest, Tool, ToolChoice, system_text
from gateway.protocols.openai_chat import ChatMessage, ChatRequest, ChatTool, ContentPart, Function, ToolCall
from gateway.translate.messages_chat.dialect import ChatDialect, short_tool_name, upstream_tool_id

# The sampling settings a Chat Completions request takes under the same names.
_SAMPLING: tuple[Literal["temperature", "top_p"], ...] = ("temperature", "top_p")
BILLING_HEADER_PREFIX = "x-anthropic-billing-header:"
TOOL_ERROR_MARK = "[tool error] "


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A translated request and what the answer's translation needs to know about it."""

    body: ChatRequest
    model: str  # the model name the client asked for; answers carry it back
    tool_names: Mapping[str, str] = field(default_factory=dict)  # sent name → client's name
    stop_sequences: tuple[str, ...] = ()

    def client_tool_name(self, sent: str) -> str:
        return self.tool_names.get(sent, sent)


def to_chat_request(request: MessagesRequest, *, upstream_model: str, dialect: ChatDialect) -> ChatCall:
    names = _ToolNames(dialect.tool_name_limit)
    messages: list[ChatMessage] = []

    system = [
        text
        for text in system_text(request.get("system"))
        if text and not (dialect.drop_billing_header and text.startswith(BILLING_HEADER_PREFIX))
    ]
    if system:
        messages.append({"role": dialect.system_role, "content": "\n".join(system)})

    for i, message in enumerate(request["messages"]):
        role = message["role"]
        content = message["content"]
        path = f"messages.{i}"
        if role == "system":
            text = "\n".join(system_text(content)) if not isinstance(content, str) else content
            if text:
                messages.append({"role": dialect.system_role, "content": text})
        elif role == "user":
            messages.extend(_user_messages(content, path, dialect))
        else:
            messages.extend(_assistant_messages(content, path, dialect, names))

    body: ChatRequest = {"model": upstream_model, "messages": _merge_consecutive(messages)}

    tools = request.get("tools") or []
    if tools:
        body["tools"] = [_tool(tool, f"tools.{i}", names) for i, tool in enumerate(tools)]
        choice = request.get("tool_choice")
        if choice:
            _tool_choice(choice, body, names)

    stop = tuple(request.get("stop_sequences") or ())
    if stop:
        cap = dialect.max_stop_sequences
        if cap is not None and len(stop) > cap:
            raise InvalidRequest(
                f"stop_sequences: this model's backend accepts at most {cap} stop sequences, got {len(stop)}"
            )
        body["stop"] = list(stop)

    max_tokens = request.get("max_tokens")
    if max_tokens is not None:
        body[dialect.max_tokens_field] = max_tokens
    if dialect.sampling:
        for key in _SAMPLING:
            value = request.get(key)
            if value is not None:
                body[key] = value
    top_k = request.get("top_k")
    if dialect.top_k and top_k:  # 0 means "disabled"
        body["top_k"] = top_k

    metadata: JsonObject = request.get("metadata") or {}
    if dialect.send_user and isinstance(metadata.get("user_id"), str) and metadata["user_id"]:
        body["user"] = hashlib.sha256(metadata["user_id"].encode()).hexdigest()[:32]

    _reasoning(request, body, dialect)
    _output_format(request, body)

    if request.get("stream"):
        body["stream"] = True
        if dialect.stream_usage:
            body["stream_options"] = {"include_usage": True}

    return ChatCall(body=body, model=request["model"], tool_names=names.reverse, stop_sequences=stop)


class _ToolNames:
    """Shortens names over the server's limit and remembers how to restore them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reverse: dict[str, str] = {}

    def sent(self, name: str) -> str:
        short = short_tool_name(name, self.limit)
        if short != name:
            self.reverse[short] = name
        return short


# ---------------------------------------------------------------------------- messages


def _user_messages(content: str | list[ContentBlock], path: str, dialect: ChatDialect) -> list[ChatMessage]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}] if content else []
    tool_messages: list[ChatMessage] = []
    parts: list[ContentPart] = []
    for j, block in enumerate(content):
        kind = block["type"]
        bpath = f"{path}.content.{j}"
        if kind == "tool_result":
            text, extra = _tool_result(block, bpath, dialect)
            tool_messages.append(
                {"role": "tool", "tool_call_id": upstream_tool_id(block["tool_use_id"]), "content": text}
            )
            parts.extend(extra)
        else:
            parts.extend(_user_part(block, bpath, dialect))
    messages = tool_messages
    if parts:
        messages.append({"role": "user", "content": _flatten(parts)})
    return messages


def _flatten(parts: list[ContentPart]) -> str | list[ContentPart]:
    """Text-only content as one string (every server takes that); parts otherwise."""
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def _user_part(block: ContentBlock, path: str, dialect: ChatDialect) -> list[ContentPart]:
    kind = block["type"]
    if kind == "text":
        return [{"type": "text", "text": block["text"]}] if block["text"] else []
    if kind == "image":
        return [_image_part(block, path, dialect)]
    if kind == "document":
        return [_document_part(block, path, dialect)]
    if kind == "search_result":
        return [{"type": "text", "text": _search_result_text(block)}]
    raise InvalidRequest(f"{path}.type: content block type '{kind}' is not supported by this model's backend")


def _image_part(block: ContentBlock, path: str, dialect: ChatDialect) -> ContentPart:
    source = block["source"]
    if source["type"] == "base64":
        url = f"data:{source['media_type']};base64,{source['data']}"
    elif source["type"] == "url":
        if not dialect.image_urls:
            raise InvalidRequest(
                f"{path}.source: this model's backend cannot fetch image URLs; send the image as base64"
            )
        url = source["url"]
    else:
        raise InvalidRequest(
            f"{path}.source.type: image source '{source['type']}' is not supported by this model's backend"
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: ContentBlock, path: str, dialect: ChatDialect) -> ContentPart:
    source = block["source"]
    title = block.get("title")
    kind = source.get("type")
    if kind == "text":
        text = source.get("data", "")
        return {"type": "text", "text": f"{title}\n{text}" if title else text}
    if kind == "content":
        inner = source.get("content")
        text = (
            inner
            if isinstance(inner, str)
            else "\n".join(b.get("text", "") for b in inner or [] if b.get("type") == "text")
        )
        return {"type": "text", "text": f"{title}\n{text}" if title else text}
    if kind == "base64" and source.get("media_type") == "application/pdf":
        if not dialect.documents:
            raise InvalidRequest(f"{path}: PDF documents are not supported by this model's backend")
        return {
            "type": "file",
            "file": {"filename": title or "document.pdf", "file_data": f"data:application/pdf;base64,{source['data']}"},
        }
    raise InvalidRequest(f"{path}.source: document source '{kind}' is not supported by this model's backend")


def _search_result_text(block: ContentBlock) -> str:
    lines = [block.get("title", ""), block.get("source", "")]
    # A search result's content is a list of text blocks, never a string.
    content = cast("list[ContentBlock]", block.get("content") or [])
    lines += [b.get("text", "") for b in content if b.get("type") == "text"]
    return "\n".join(line for line in lines if line)


def _tool_result(block: ContentBlock, path: str, dialect: ChatDialect) -> tuple[str, list[ContentPart]]:
    """The tool message text, and the parts (images) that must follow in a user message."""
    content = block.get("content")
    extra: list[ContentPart] = []
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        texts = []
        for k, inner in enumerate(content):
            kind = inner.get("type")
            if kind == "text":
                texts.append(inner["text"])
            elif kind == "image":
                extra.append(_image_part(inner, f"{path}.content.{k}", dialect))
            elif kind == "document":
                extra.append(_document_part(inner, f"{path}.content.{k}", dialect))
            elif kind == "search_result":
                texts.append(_search_result_text(inner))
            else:
                raise InvalidRequest(
                    f"{path}.content.{k}.type: content block type '{kind}' is not supported by this model's backend"
                )
        text = "\n".join(texts)
    if block.get("is_error"):
        text = TOOL_ERROR_MARK + text
    return text, extra


def _assistant_messages(
    content: str | list[ContentBlock], path: str, dialect: ChatDialect, names: _ToolNames
) -> list[ChatMessage]:
    message: ChatMessage = {"role": "assistant"}
    if isinstance(content, str):
        message["content"] = content
        if dialect.reasoning_history != "drop":
            message[dialect.reasoning_history] = ""
        return [message]
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[ToolCall] = []
    for j, block in enumerate(content):
        kind = block["type"]
        if kind == "text":
            if block["text"]:
                texts.append(block["text"])
        elif kind == "tool_use":
            calls.append(
                {
                    "id": upstream_tool_id(block["id"]),
                    "type": "function",
                    "function": {"name": names.sent(block["name"]), "arguments": _json(block["input"])},
                }
            )
        elif kind == "thinking":
            if block["thinking"]:
                thinking.append(block["thinking"])
        elif kind == "redacted_thinking":
            pass  # opaque to every server but Anthropic's
        else:
            raise InvalidRequest(
                f"{path}.content.{j}.type: content block type '{kind}' is not supported by this model's backend"
            )
    message["content"] = "\n".join(texts) if texts else None
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    if dialect.reasoning_history != "drop":
        # DeepSeek's thinking mode rejects a history where any assistant turn lacks the field.
        message[dialect.reasoning_history] = "\n".join(thinking)
    return [message]


def _merge_consecutive(messages: list[ChatMessage]) -> list[ChatMessage]:
    """Join adjacent user turns and adjacent assistant turns: strict chat templates demand
    alternation ("conversation roles must alternate"), and the Messages API merges them itself.
    Each run is joined once, at its end: joining turn by turn copied everything joined so
    far once per turn, and a body of many short turns held the worker for minutes."""
    merged: list[ChatMessage] = []
    run: list[ChatMessage] = []
    for message in messages:
        if run and not _continues(run[0], message):
            merged.append(_join_run(run))
            run = []
        run.append(message)
    if run:
        merged.append(_join_run(run))
    return merged


def _continues(first: ChatMessage, message: ChatMessage) -> bool:
    """Whether `message` joins the run `first` began: a user turn after user turns, an
    assistant turn after assistant turns (never system or tool messages)."""
    return message["role"] == first["role"] and message["role"] in ("user", "assistant")


def _join_run(run: list[ChatMessage]) -> ChatMessage:
    if len(run) == 1:
        return run[0]
    if run[0]["role"] == "user":
        # The translation gives every user message a content, never None.
        contents = cast("list[str | list[ContentPart]]", [m["content"] for m in run])
        return {"role": "user", "content": _join_user_contents(contents)}
    return _join_assistants(run)


def _join_user_contents(contents: list[str | list[ContentPart]]) -> str | list[ContentPart]:
    """Text-only turns as one string, a line apart; with any non-text part, the parts of
    every turn in order (a text-only turn as one text part)."""
    texts = [c for c in contents if isinstance(c, str)]
    if len(texts) == len(contents):
        return "\n".join(texts)
    parts: list[ContentPart] = []
    for content in contents:
        if isinstance(content, str):
            parts.append({"type": "text", "text": content})
        else:
            parts.extend(content)
    return parts


def _join_assistants(run: list[ChatMessage]) -> ChatMessage:
    texts = cast("list[str]", [m["content"] for m in run if m.get("content")])  # an assistant's content: text or None
    joined: ChatMessage = {"role": "assistant", "content": "\n".join(texts) if texts else None}
    calls = [call for m in run for call in m.get("tool_calls") or ()]
    if calls:
        joined["tool_calls"] = calls
    elif joined["content"] is None:
        joined["content"] = ""
    for key in ("reasoning_content", "reasoning"):
        if any(key in m for m in run):
            joined[key] = "\n".join(m[key] for m in run if m.get(key))
    return joined


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


# ---------------------------------------------------------------------------- tools


def _tool(tool: Tool, path: str, names: _ToolNames) -> ChatTool:
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise InvalidRequest(f"{path}.type: tool type '{kind}' is not supported by this model's backend")
    function: Function = {"name": names.sent(tool["name"])}
    if tool.get("description"):
        function["description"] = tool["description"]
    function["parameters"] = tool["input_schema"]
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice(choice: ToolChoice, body: ChatRequest, names: _ToolNames) -> None:
    kind = choice["type"]
    if kind == "auto":
        body["tool_choice"] = "auto"
    elif kind == "any":
        body["tool_choice"] = "required"
    elif kind == "tool":
        body["tool_choice"] = {"type": "function", "function": {"name": names.sent(choice["name"])}}
    elif kind == "none":
        body["tool_choice"] = "none"
        return
    if choice.get("disable_parallel_tool_use"):
        body["parallel_tool_calls"] = False


# ---------------------------------------------------------------------------- reasoning, output


def effort_for_budget(budget: int) -> str:
    """A thinking budget → an OpenAI reasoning effort bucket."""
    if budget < 4096:
        return "low"
    if budget < 16384:
        return "medium"
    return "high"


def _reasoning(request: MessagesRequest, body: ChatRequest, dialect: ChatDialect) -> None:
    if dialect.reasoning == "none":
        return
    thinking: Mapping[str, Any] = request.get("thinking") or {}
    kind = thinking.get("type")
    effort = (request.get("output_config") or {}).get("effort")
    if kind is None and effort is None:
        return
    on = kind in ("enabled", "adaptive") or (kind is None and effort is not None)
    if dialect.reasoning == "effort":
        if kind == "enabled":
            body["reasoning_effort"] = effort or effort_for_budget(thinking["budget_tokens"])
        elif on and effort:
            body["reasoning_effort"] = effort
        elif kind == "disabled":
            body["reasoning_effort"] = "none"
    elif dialect.reasoning == "chat_template_kwargs":
        if kind is not None:
            body["chat_template_kwargs"] = {"enable_thinking": on}
    elif dialect.reasoning == "deepseek":
        if kind is not None:
            body["thinking"] = {"type": "enabled" if on else "disabled"}


def _output_format(request: MessagesRequest, body: ChatRequest) -> None:
    fmt = (request.get("output_config") or {}).get("format")
    if not fmt:
        return
    schema = fmt["schema"]
    body["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": _strict_compatible(schema)},
    }


# JSON Schema keywords whose value is a subschema, a list of subschemas, or a map of
# names to subschemas. Only these are walked: a property *named* `properties` or `type`
# is not a keyword, and `default`/`examples`/`const` values are data, not schemas.
_SUBSCHEMA = (
    "items",
    "additionalItems",
    "additionalProperties",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
)
_SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems", "items")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def _strict_compatible(schema: Any) -> bool:
    """OpenAI's strict mode needs every object closed and every property required; ask for
    it only when the schema already says so, rather than rewrite the client's schema.
    Walked with a stack rather than recursion: no schema's depth can exhaust Python's."""
    pending = [schema]
    while pending:
        node = pending.pop()
        if not isinstance(node, dict):
            continue
        if node.get("type") == "object" or "properties" in node:
            props = node.get("properties") or {}
            if node.get("additionalProperties") is not False:
                return False
            if set(node.get("required") or ()) != set(props):
                return False
        pending.extend(node[key] for key in _SUBSCHEMA if isinstance(node.get(key), dict))
        for key in _SUBSCHEMA_LISTS:
            if isinstance(node.get(key), list):
                pending.extend(node[key])
        for key in _SUBSCHEMA_MAPS:
            if isinstance(node.get(key), dict):
                pending.extend(node[key].values())
    return True
