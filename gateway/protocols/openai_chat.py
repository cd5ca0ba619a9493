"""The Chat Completions request as the gateway sends it: wire types for the type checker.

Only the request has types here: the gateway builds it (`translate/messages_chat/request.py`),
so its shape is known. What an upstream answers is read as untrusted JSON (`Any`), field
by field, with a check at each step. At run time every type below is a plain dict.
"""

from __future__ import annotations

from typing import Any, Literal, Required, TypedDict


class ImageUrl(TypedDict):
    url: str  # http(s), or a `data:` URL for base64 images


class FileData(TypedDict):
    filename: str
    file_data: str  # a `data:application/pdf;base64,...` URL


class ContentPart(TypedDict, total=False):
    """One part of a user message: text, image_url or file (one shape, as Messages blocks)."""

    type: Required[str]
    text: str
    image_url: ImageUrl
    file: FileData


class FunctionCall(TypedDict):
    name: str
    arguments: str  # JSON text


class ToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(TypedDict, total=False):
    """A system, developer, user, assistant or tool message."""

    role: Required[str]
    content: str | list[ContentPart] | None
    tool_call_id: str  # tool
    tool_calls: list[ToolCall]  # assistant
    # Earlier thinking, echoed under whichever name the server reads (DeepSeek, vLLM).
    reasoning_content: str
    reasoning: str


class Function(TypedDict, total=False):
    name: Required[str]
    description: Any  # the client's, passed on as it came
    parameters: dict[str, Any]  # a JSON Schema
    strict: bool


class ChatTool(TypedDict):
    type: Literal["function"]
    function: Function


class NamedFunction(TypedDict):
    name: str


class NamedToolChoice(TypedDict):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(TypedDict):
    name: str
    schema: dict[str, Any]
    strict: bool


class ResponseFormat(TypedDict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


class StreamOptions(TypedDict):
    include_usage: bool


class ChatRequest(TypedDict, total=False):
    model: Required[str]
    messages: Required[list[ChatMessage]]
    tools: list[ChatTool]
    tool_choice: Literal["auto", "required", "none"] | NamedToolChoice
    parallel_tool_calls: bool
    stop: list[str]
    max_tokens: int
    max_completion_tokens: int
    temperature: float
    top_p: float
    top_k: int
    user: str
    reasoning_effort: str
    chat_template_kwargs: dict[str, bool]  # vLLM / SGLang: {"enable_thinking": ...}
    thinking: dict[str, str]  # DeepSeek: {"type": "enabled" | "disabled"}
    response_format: ResponseFormat
    stream: bool
    stream_options: StreamOptions
