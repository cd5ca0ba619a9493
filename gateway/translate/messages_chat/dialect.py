"""How one OpenAI-style server wants its Chat Completions request: the flags the translators read.

Vendors that speak Chat Completions differ in small ways (which field holds the token
limit, whether `top_k` is accepted, how reasoning is switched on, how many stop
sequences fit). Each difference is one named flag here; `backends/presets.py` sets them
per vendor and the YAML may override any of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

ReasoningControl = Literal["none", "effort", "chat_template_kwargs", "deepseek"]
ReasoningHistory = Literal["drop", "reasoning_content", "reasoning"]


@dataclass(frozen=True, slots=True)
class ChatDialect:
    # `max_completion_tokens` for OpenAI/Azure/Groq; `max_tokens` for vLLM, Ollama, DeepSeek, Together.
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    # OpenAI and Azure reject `top_k` ("Unrecognized request argument").
    top_k: bool = True
    # OpenAI reasoning models accept only the default temperature/top_p.
    sampling: bool = True
    # OpenAI and Azure cap `stop` at 4; None = no cap. More than the cap is a 400.
    max_stop_sequences: int | None = None
    # PDF documents as `file` content parts (OpenAI only).
    documents: bool = False
    # Whether the server fetches `image_url` http(s) URLs itself (Ollama cannot).
    image_urls: bool = True
    # How `thinking` / `output_config.effort` reach the server.
    reasoning: ReasoningControl = "none"
    # Where earlier assistant thinking goes: dropped, or echoed for servers that need it (DeepSeek).
    reasoning_history: ReasoningHistory = "drop"
    # `stream_options: {include_usage: true}`; some servers 400 on it.
    stream_usage: bool = True
    # Role used for system text (top-level and mid-conversation).
    system_role: Literal["system", "developer"] = "system"
    # Claude Code's first system block changes on every request and defeats prefix caches.
    drop_billing_header: bool = True
    # `metadata.user_id` → `user` (sent as a hash: servers restrict its length and alphabet).
    send_user: bool = True
    # Function names longer than this are shortened (with a hash) and restored in answers.
    tool_name_limit: int = 64


def short_tool_name(name: str, limit: int) -> str:
    """A deterministic name of at most `limit` characters for a longer tool name."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9]}_{digest}"


_ID_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_ENCODED_ID = "gwx_"


def client_tool_id(upstream_id: str) -> str:
    """A tool-use id the Messages API accepts (`^[a-zA-Z0-9_-]+$`) for any upstream id.

    Ids with other characters (Kimi's `functions.Bash:0`) are hex-encoded behind a
    prefix, so `upstream_tool_id` can give the upstream its own id back on the next turn
    without any state kept between requests.
    """
    if upstream_id and all(c in _ID_SAFE for c in upstream_id) and not upstream_id.startswith(_ENCODED_ID):
        return upstream_id
    return _ENCODED_ID + upstream_id.encode().hex()


def upstream_tool_id(client_id: str) -> str:
    if client_id.startswith(_ENCODED_ID):
        try:
            return bytes.fromhex(client_id[len(_ENCODED_ID) :]).decode()
        except (ValueError, UnicodeDecodeError):
            return client_id
    return client_id
