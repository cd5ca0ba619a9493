"""Chat Completions response → Messages response. Pure.

The pieces the stream translator shares (stop reasons, usage, tool ids and names) are
public functions here, so a streamed answer and the same answer unstreamed cannot drift.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson

from gateway.errors import GatewayError, Overloaded, UpstreamProtocolError
from gateway.protocols.messages import ContentBlock, JsonObject, MessagesResponse, Usage, new_message_id
from gateway.protocols.usage import token_count
from gateway.translate.estimate import estimate_output_tokens
from gateway.translate.messages_chat.dialect import client_tool_id
from gateway.translate.messages_chat.request import ChatCall

log = logging.getLogger(__name__)

# Vendor finish reasons that mean the generation failed rather than ended.
_FAILED_FINISH = {"abort": GatewayError, "error": GatewayError, "insufficient_system_resource": Overloaded}


def stop_reason(
    finish_reason: str | None, *, had_tool_use: bool, matched: Any = None, stop_sequences: tuple[str, ...] = ()
) -> tuple[str, str | None]:
    """`(stop_reason, stop_sequence)` for an OpenAI `finish_reason`.

    `matched` is the stop string the server reports (vLLM `stop_reason`, SGLang
    `matched_stop`); an int there is a stop *token*, not a sequence.
    """
    if finish_reason in _FAILED_FINISH:
        raise _FAILED_FINISH[finish_reason](f"upstream generation failed (finish_reason: {finish_reason})")
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason == "content_filter":
        return "refusal", None
    if finish_reason in ("tool_calls", "function_call"):
        return ("tool_use" if had_tool_use else "end_turn"), None
    # "stop", "eos", None and anything unknown at a clean end.
    if had_tool_use:
        return "tool_use", None
    if isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return "end_turn", None


def usage_from_chat(usage: Any) -> Usage | None:
    """Messages usage from an OpenAI `usage` object (None when the server sent none).

    Cached prompt tokens are reported apart, as the Messages API does: `input_tokens` is
    the uncached rest, and the sum of the three is what the prompt cost. Every count is
    clamped (`token_count`): the gateway settles budgets with them.
    """
    if not isinstance(usage, dict):
        return None
    prompt = token_count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    if not isinstance(details, dict):
        details = {}
    cached = token_count(details.get("cached_tokens")) or token_count(usage.get("prompt_cache_hit_tokens"))
    written = token_count(details.get("cache_write_tokens"))
    return {
        "input_tokens": max(prompt - cached - written, 0),
        "output_tokens": token_count(usage.get("completion_tokens")),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }


def find_usage(payload: JsonObject) -> Any:
    """The usage object wherever a server puts it (Groq nests it in `x_groq`)."""
    usage = payload.get("usage")
    if usage is None and isinstance(payload.get("x_groq"), dict):
        usage = payload["x_groq"].get("usage")
    return usage


def tool_input(arguments: Any, *, name: str) -> JsonObject:
    """The parsed arguments of a tool call. Unparsable or non-object arguments become `{}`
    (a string `input` breaks every client) and are logged."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        log.warning("upstream tool call %r has arguments that are not JSON; sending input {}", name)
        return {}
    if not isinstance(value, dict):
        log.warning("upstream tool call %r has arguments that are not a JSON object; sending input {}", name)
        return {}
    return value


def reasoning_text(message: JsonObject) -> str | None:
    """Reasoning text under either of the names servers use (`reasoning_content`, `reasoning`)."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return None


_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_-]")


def message_id(upstream_id: Any) -> str:
    if isinstance(upstream_id, str) and upstream_id:
        safe = _UNSAFE_ID.sub("_", upstream_id)
        return safe if safe.startswith("msg_") else "msg_" + safe
    return new_message_id()


def _generated(block: ContentBlock) -> str:
    if block["type"] == "tool_use":
        return orjson.dumps(block["input"]).decode()
    return block.get("text") or block.get("thinking") or ""


def synthetic_tool_id(message_id: str, ordinal: int) -> str:
    """An id for a tool call the upstream sent without one: unique per answer, and stable
    for the same answer (the translators stay pure)."""
    return f"toolu_{message_id.removeprefix('msg_')}_{ordinal}"


def from_chat_response(response: Any, call: ChatCall, *, input_tokens: int = 0) -> MessagesResponse:
    """`input_tokens` is the gateway's estimate, reported only if the server sent no usage."""
    if not isinstance(response, dict):
        raise UpstreamProtocolError("upstream answer is not a JSON object")
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamProtocolError("upstream answer has no choices")
    choice = choices[0]  # the gateway never asks for `n`; extra choices are ignored
    message = choice.get("message")
    if not isinstance(message, dict):
        raise UpstreamProtocolError("upstream answer has no message")

    msg_id = message_id(response.get("id"))
    content: list[ContentBlock] = []
    thinking = reasoning_text(message)
    if thinking:
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    for n, tool_call in enumerate(message.get("tool_calls") or ()):
        function = tool_call.get("function") or {}
        name = call.client_tool_name(function.get("name") or "")
        if not name:
            raise UpstreamProtocolError("upstream tool call has no function name")
        content.append(
            {
                "type": "tool_use",
                "id": client_tool_id(tool_call.get("id") or synthetic_tool_id(msg_id, n)),
                "name": name,
                "input": tool_input(function.get("arguments"), name=name),
            }
        )

    had_tool_use = any(block["type"] == "tool_use" for block in content)
    if isinstance(refusal, str) and refusal:
        reason, sequence = "refusal", None
    else:
        reason, sequence = stop_reason(
            choice.get("finish_reason"),
            had_tool_use=had_tool_use,
            matched=choice.get("stop_reason", choice.get("matched_stop")),
            stop_sequences=call.stop_sequences,
        )
    usage: Usage = usage_from_chat(find_usage(response)) or {
        "input_tokens": input_tokens,
        "output_tokens": estimate_output_tokens(sum(len(_generated(block)) for block in content)),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": call.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage,
    }
