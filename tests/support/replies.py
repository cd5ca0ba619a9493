"""Builders for the fake upstream's scripted replies (see gateway/fake_upstream.py)."""

from __future__ import annotations

from typing import Any


def chat_message(
    content: str | None = None,
    *,
    tool_calls: list[dict] | None = None,
    reasoning: str | None = None,
    finish_reason: str = "stop",
    usage: dict | None = None,
    status: int = 200,
    **choice_extra: Any,
) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    body = {
        "id": "chatcmpl-test1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "upstream-chat-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, **choice_extra}],
        "usage": usage or {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }
    return {"status": status, "json": body}


def tool_call(call_id: str, name: str, arguments: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def error(status: int, message: str, **extra: Any) -> dict:
    return {"status": status, "json": {"error": {"message": message, "type": "server_error"}}, **extra}


def chat_chunks(
    *deltas: dict, finish_reason: str = "stop", usage: dict | None = None, done: bool = True, **choice_extra: Any
) -> list:
    """A Chat Completions stream: one chunk per delta, a finish chunk, a usage chunk, `[DONE]`."""
    base = {
        "id": "chatcmpl-test1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "upstream-chat-model",
    }
    items: list[Any] = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    items += [{**base, "choices": [{"index": 0, "delta": delta}]} for delta in deltas]
    items.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason, **choice_extra}]})
    items.append(
        {**base, "choices": [], "usage": usage or {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}
    )
    if done:
        items.append("data: [DONE]\n\n")
    return items


def native_message(content: list[dict], *, stop_reason: str = "end_turn", usage: dict | None = None) -> dict:
    return {
        "json": {
            "id": "msg_native1",
            "type": "message",
            "role": "assistant",
            "model": "upstream-native-model",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage or {"input_tokens": 21, "output_tokens": 9},
        }
    }


def native_stream(text: str, *, usage: dict | None = None) -> list:
    """A Messages stream (a native backend's): input usage in message_start, output in message_delta."""
    usage = usage or {"input_tokens": 21, "output_tokens": 9}
    start_usage = {k: v for k, v in usage.items() if k != "output_tokens"} | {"output_tokens": 1}
    message = {
        "id": "msg_native1",
        "type": "message",
        "role": "assistant",
        "model": "upstream-native-model",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    events = [
        ("message_start", {"message": message}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}}),
        ("content_block_stop", {"index": 0}),
        (
            "message_delta",
            {
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": usage.get("output_tokens", 0)},
            },
        ),
        ("message_stop", {}),
    ]
    return [{"event": name, "data": {"type": name, **data}} for name, data in events]
