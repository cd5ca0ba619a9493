"""An upstream's HTTP error → the gateway error the client gets. Pure.

Mapped by status, never by the upstream's own `type` string, so vendor vocabulary
(`BadRequestError`, `server_error`) never reaches a client that only knows the Messages
API's error types. The upstream's message is kept where it describes the client's own
request (4xx); for the gateway's credentials and upstream failures it is replaced, so
nothing about the upstream's keys or internals leaks. A 4xx saying the request overflowed
the model's context window, in any upstream's words, is a `ContextWindowExceeded` in the
Messages API's (routing sends those to the model's `context_fallbacks`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import (
    ContextWindowExceeded,
    GatewayError,
    InvalidRequest,
    NotFound,
    Overloaded,
    RateLimited,
    RequestTooLarge,
    UpstreamTimeout,
)

_MAX_MESSAGE = 1000

# How the Messages API words a context overflow (and so how `context_length_message` words
# one from any other upstream): a native backend's 400 says nothing more machine-readable.
OVERFLOW_PREFIXES = ("prompt is too long", "input length and `max_tokens` exceed context limit")

# "This model's maximum context length is 102400 tokens. However, you requested 107837
# tokens (99645 in the messages, 8192 in the completion)."
_CONTEXT_FULL = re.compile(
    r"maximum context length is (\d+) tokens.*?requested (\d+) tokens \((\d+) in the messages, (\d+) in the completion\)",
    re.S,
)
# Current vLLM: "... maximum context length is 32768 tokens. However, you requested 8192
# output tokens and your prompt contains at least 24577 input tokens, for a total of ..."
_CONTEXT_SPLIT = re.compile(
    r"maximum context length is (\d+) tokens.*?requested (\d+) output tokens and your prompt contains (?:at least )?(\d+) input tokens",
    re.S,
)
# vLLM: "... maximum context length is 4096 tokens. However, your request has 5000 input tokens ...";
# OpenAI: "... maximum context length is 8192 tokens. However, your messages resulted in 8197 tokens."
_CONTEXT_PROMPT = re.compile(
    r"maximum context length is (\d+) tokens.*?(?:request has|requested|resulted in) (\d+) (?:input )?tokens", re.S
)


# Credentials an upstream may echo back in an error ("Incorrect API key provided: sk-ab…"),
# by the shapes providers give them. A named value keeps its name (`api-key=[redacted]`).
_SECRET = re.compile(
    "|".join(
        (
            # `api-key=…`, `api_key: …`, `"token": "…"`, `key=…` (query strings, headers, JSON)
            r"""(?P<name>\b(?:x-)?(?:api[-_ ]?key|access[-_]?token|auth[-_]?token|token|secret|password|key)["']?"""
            r"""\s*[:=]\s*["']?)[^\s"'&,;]{8,}""",
            # OpenAI (masked `sk-proj-****abcd` too), Anthropic, DeepSeek, xAI, this gateway; a last `.` ends a sentence
            r"\b(?:sk|pk|rk|gk|key|xai)-[A-Za-z0-9_\-*.]{5,}[A-Za-z0-9_\-*]",
            r"\b(?:gsk|hf)_[A-Za-z0-9]{8,}",  # Groq, Hugging Face
            r"\bAIza[0-9A-Za-z_\-]{20,}",  # Google
            r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
            r"\b[0-9a-f]{32}\b",  # Azure OpenAI and Cognitive Services keys
            r"\b(?:Bearer|Basic)\s+[^\s\"',;]+",  # an Authorization header's credentials
            r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)",  # a URL's user:password
        )
    ),
    re.I,
)


def scrub(text: str) -> str:
    """`text` with every credential-shaped part replaced by `[redacted]`."""
    return _SECRET.sub(_redacted, text)


def _redacted(match: re.Match[str]) -> str:
    return (match.group("name") or "") + "[redacted]"


def upstream_message(body: bytes) -> str:
    """The human message in an upstream error body of any common shape, secrets scrubbed.
    Only its start is kept: what is scanned is bounded too, with room for a secret that
    begins inside the part kept to be seen whole."""
    return scrub(_message(body)[: 2 * _MAX_MESSAGE])[:_MAX_MESSAGE]


def _message(body: bytes) -> str:
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        if text.startswith("<"):
            return ""  # an HTML error page from a proxy in front of the upstream says nothing useful
        return text
    message: object = None
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
        if message is None:
            message = payload.get("message") or payload.get("detail")
    if not isinstance(message, str):
        message = orjson.dumps(payload).decode()
    return message


def context_length_message(message: str) -> str | None:
    """The Messages API's wording for a context overflow, which clients act on (by compacting)."""
    full = _CONTEXT_FULL.search(message)
    if full:
        limit, _, prompt, completion = (int(g) for g in full.groups())
        return _overflow_message(limit, prompt, completion)
    split = _CONTEXT_SPLIT.search(message)
    if split:
        limit, completion, prompt = (int(g) for g in split.groups())
        return _overflow_message(limit, prompt, completion)
    prompt_only = _CONTEXT_PROMPT.search(message)
    if prompt_only:
        limit, prompt = (int(g) for g in prompt_only.groups())
        return f"prompt is too long: {prompt} tokens > {limit} maximum"
    if "context_length_exceeded" in message or "context length" in message.lower():
        return f"prompt is too long: {message}"
    return None


def _overflow_message(limit: int, prompt: int, completion: int) -> str:
    """The prompt alone is too long, or the prompt fits and the output budget does not."""
    if prompt > limit or completion <= 0:
        return f"prompt is too long: {prompt} tokens > {limit} maximum"
    return (
        f"input length and `max_tokens` exceed context limit: {prompt} + {completion} > {limit}, "
        "decrease input length or max_tokens and try again"
    )


def upstream_code(body: bytes) -> str | None:
    """OpenAI's machine-readable `error.code` (`context_length_exceeded`, …), if any."""
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    code = error.get("code") if isinstance(error, dict) else payload.get("code")
    return code if isinstance(code, str) else None


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A header by name, case-insensitively (the caller may pass a plain dict)."""
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def error_from_upstream(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> GatewayError:
    error = _by_status(status, body, headers)
    error.upstream_status = status
    retry_after = _header(headers, "retry-after")
    if retry_after:
        try:
            error.upstream_retry_after = max(float(retry_after), 0.0)
        except ValueError:
            pass  # an HTTP date; the backoff decides instead
    return error


def _by_status(status: int, body: bytes, headers: Mapping[str, str] | None) -> GatewayError:
    message = upstream_message(body)
    if status in (400, 422):
        overflow = context_length_message(message)
        if overflow is None and upstream_code(body) == "context_length_exceeded":
            overflow = f"prompt is too long: {message}"
        return _invalid(overflow or message or "upstream rejected the request")
    if status in (401, 403):
        # The gateway's own credential was refused: a 401 would make the client think its key is bad.
        return GatewayError("the gateway's credentials for this model's backend were refused")
    if status == 404:
        return NotFound(message or "not found")
    if status == 413:
        return RequestTooLarge(message or "request too large for this model's backend")
    if status == 429:
        retry_after = _header(headers, "retry-after")
        return RateLimited(
            "this model's backend is rate limited; try again later",
            headers={"retry-after": retry_after} if retry_after else None,
        )
    if status in (408, 504):
        return UpstreamTimeout("this model's backend timed out")
    if status in (502, 503, 529):
        return Overloaded("this model's backend is overloaded")
    if 400 <= status < 500:
        return _invalid(message or f"upstream rejected the request with status {status}")
    return GatewayError(f"this model's backend failed (status {status})")


def _invalid(message: str) -> InvalidRequest:
    """The client's own bad request; a context overflow by its Messages wording."""
    if message.startswith(OVERFLOW_PREFIXES):
        return ContextWindowExceeded(message)
    return InvalidRequest(message)
