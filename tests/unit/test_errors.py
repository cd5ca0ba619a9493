"""The error tree: each class's status, Messages error type and retry advice, decided once;
and the scrubbing of credentials from the upstream text an error carries, on every path
that copies it to a client (an error status, a native `error` event, a Chat Completions
error chunk)."""

from __future__ import annotations

import orjson
import pytest

from gateway import errors
from gateway.backends.presets import ChatDialect
from gateway.protocols.sse import SseDecoder
from gateway.translate.messages_chat.relay import ChatRelay
from gateway.translate.messages_chat.request import to_chat_request
from gateway.translate.messages_native.relay import NativeRelay
from gateway.translate.upstream_errors import error_from_upstream, scrub, upstream_message

TABLE = [
    (errors.InvalidRequest, 400, "invalid_request_error", None),
    (errors.ContextWindowExceeded, 400, "invalid_request_error", None),
    (errors.MethodNotAllowed, 405, "invalid_request_error", None),
    (errors.AuthenticationFailed, 401, "authentication_error", "false"),
    (errors.PermissionDenied, 403, "permission_error", "false"),
    (errors.NotFound, 404, "not_found_error", None),
    (errors.RequestTooLarge, 413, "request_too_large", None),
    (errors.RateLimited, 429, "rate_limit_error", None),
    (errors.GatewayError, 500, "api_error", None),
    (errors.UpstreamProtocolError, 502, "api_error", None),
    (errors.UpstreamTooLarge, 502, "api_error", None),
    (errors.UpstreamTimeout, 504, "timeout_error", None),
    (errors.Overloaded, 529, "overloaded_error", None),
]


@pytest.mark.parametrize(("cls", "status", "error_type", "should_retry"), TABLE, ids=[row[0].__name__ for row in TABLE])
def test_status_type_and_retry_advice(cls, status, error_type, should_retry):
    error = cls("something happened", headers={"retry-after": "3"} if status == 429 else None)
    assert error.status == status and error.error_type == error_type
    assert error.body("req_1") == {
        "type": "error",
        "error": {"type": error_type, "message": "something happened"},
        "request_id": "req_1",
    }
    headers = error.response_headers()
    # Claude Code retries a 401 ten times unless told not to.
    assert headers.get("x-should-retry") == should_retry
    if status == 429:
        assert headers["retry-after"] == "3"


def _gateway_errors() -> list[type[errors.GatewayError]]:
    """Every error class `errors.py` itself defines (not those it imports)."""
    return [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.GatewayError) and value.__module__ == errors.__name__
    ]


def _docstring_tree() -> dict[str, tuple[str | None, int, str]]:
    """The tree in `errors.py`'s docstring: each class's parent, status and error type."""
    rows: dict[str, tuple[str | None, int, str]] = {}
    parents: list[str] = []
    for line in (errors.__doc__ or "").splitlines():
        words = line.strip(" │├└─").split()
        if not line.startswith("    ") or len(words) != 3:
            continue
        depth = (len(line) - len(line.lstrip(" │├└─")) - 4) // 4
        del parents[depth:]
        rows[words[0]] = (parents[-1] if parents else None, int(words[1]), words[2])
        parents.append(words[0])
    return rows


def test_the_module_docstring_draws_every_error_class():
    defined = {cls.__name__ for cls in _gateway_errors()}
    tree = set(_docstring_tree())
    assert len(defined) > 10 and defined == tree, f"missing: {sorted(defined - tree)}, extra: {sorted(tree - defined)}"


@pytest.mark.parametrize("cls", _gateway_errors(), ids=lambda cls: cls.__name__)
def test_the_docstring_tree_gives_each_class_its_parent_status_and_type(cls):
    parent = cls.__base__.__name__ if cls is not errors.GatewayError else None
    assert _docstring_tree()[cls.__name__] == (parent, cls.status, cls.error_type)


# ---------------------------------------------------------------- context overflow

OVERFLOWS = {
    # A native (Anthropic) upstream's own words, kept as they are.
    "native-prompt": (
        b'{"type": "error", "error": {"type": "invalid_request_error", '
        b'"message": "prompt is too long: 210000 tokens > 200000 maximum"}}'
    ),
    "native-output": (
        b'{"type": "error", "error": {"type": "invalid_request_error", "message": '
        b'"input length and `max_tokens` exceed context limit: 190000 + 20000 > 200000, '
        b'decrease input length or max_tokens and try again"}}'
    ),
    # Chat upstreams, reworded to the Messages API's.
    "vllm": b'{"error": {"message": "This model\'s maximum context length is 4096 tokens. However, your '
    b'request has 5000 input tokens."}}',
    "code-only": b'{"error": {"message": "too many tokens", "code": "context_length_exceeded"}}',
}


@pytest.mark.parametrize("body", OVERFLOWS.values(), ids=OVERFLOWS.keys())
@pytest.mark.parametrize("status", [400, 422])
def test_a_context_overflow_from_any_upstream_is_its_own_class(status, body):
    error = error_from_upstream(status, body)
    assert isinstance(error, errors.ContextWindowExceeded)
    assert (error.status, error.error_type, error.upstream_status) == (400, "invalid_request_error", status)
    assert error.message.startswith(("prompt is too long", "input length and `max_tokens` exceed context limit"))


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_other_client_errors_are_not_overflows(status):
    error = error_from_upstream(status, b'{"error": {"message": "messages: field required"}}')
    assert not isinstance(error, errors.ContextWindowExceeded)


# ---------------------------------------------------------------- secrets in upstream text

# (text an upstream sent, what the client may see of it)
SECRETS = [
    (
        "Incorrect API key provided: sk-proj-****7890. You can find your API key at https://platform.openai.com/api-keys.",
        "Incorrect API key provided: [redacted]. You can find your API key at https://platform.openai.com/api-keys.",
    ),
    ("Incorrect API key provided: sk-abc.def.0123456789", "Incorrect API key provided: [redacted]"),
    ("invalid x-api-key sk-ant-api03-AbCdEf_0123456789", "invalid x-api-key [redacted]"),
    ("Invalid API Key gsk_4fQ2kLmN8pRsTuVwXyZa0123 for org", "Invalid API Key [redacted] for org"),
    ("xai-Zq8Yw7Xv6Ut5Sr4Qp3On2Ml1Kk0Jj9Ii is not valid", "[redacted] is not valid"),
    ("token hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345 expired", "token [redacted] expired"),
    (
        "Access denied due to invalid subscription key 0123456789abcdef0123456789ABCDEF.",
        "Access denied due to invalid subscription key [redacted].",
    ),
    (
        "POST /openai/deployments/gpt?api-version=2024-06-01&api-key=Zx9Yw8Vu7Ts6 failed",
        "POST /openai/deployments/gpt?api-version=2024-06-01&api-key=[redacted] failed",
    ),
    ("api_key: 'Zx9Yw8Vu7Ts6' is wrong", "api_key: '[redacted]' is wrong"),
    ('{"header": "x-api-key", "key": "Zx9Yw8Vu7Ts6Rq5"}', '{"header": "x-api-key", "key": "[redacted]"}'),
    ("GET /v1/models?key=AIzaSyA-0123456789abcdefghijklmno", "GET /v1/models?key=[redacted]"),
    ("AIzaSyA-0123456789abcdefghijklmno is not enabled", "[redacted] is not enabled"),
    ("Authorization: Bearer eyJhbGciOi.J9.sig refused", "Authorization: [redacted] refused"),
    ("proxy said: Basic dXNlcjpwYXNzd29yZA== is wrong", "proxy said: [redacted] is wrong"),
    ("cannot reach https://admin:hunter2@10.0.0.1/v1", "cannot reach https://[redacted]@10.0.0.1/v1"),
    ("aws key AKIAIOSFODNN7EXAMPLE denied", "aws key [redacted] denied"),
    ("password=correct-horse-battery", "password=[redacted]"),
]
# Upstream text that holds no credential, kept as it is.
KEPT = [
    "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.",
    "max_tokens: 100000 is more than the model allows",
    "request req_0123456789abcdef0123456789abcdef failed; see the key-value docs",
    "messages.0.content: Input should be a valid string",
    "the monkey=banana field is unknown",
]


@pytest.mark.parametrize(("text", "seen"), SECRETS, ids=[seen for _, seen in SECRETS])
def test_credentials_are_scrubbed_from_upstream_text(text, seen):
    assert scrub(text) == seen


@pytest.mark.parametrize("text", KEPT)
def test_text_without_credentials_is_kept(text):
    assert scrub(text) == text


def _secret(text: str) -> str:
    """The credential in one of `SECRETS`: what its scrubbed form replaced."""
    seen = dict(SECRETS)[text]
    head, _, tail = seen.partition("[redacted]")
    return text[len(head) : len(text) - len(tail)]


CALL = to_chat_request(
    {"model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    upstream_model="up",
    dialect=ChatDialect(),
)


def _error_status(text: str) -> str:
    return error_from_upstream(400, orjson.dumps({"error": {"message": text, "type": "invalid_request_error"}})).message


def _native_error_event(text: str) -> str:
    relay = NativeRelay("m")
    out = relay.feed(
        b"event: error\ndata: "
        + orjson.dumps({"type": "error", "error": {"type": "api_error", "message": text}})
        + b"\n\n"
    )
    [event] = SseDecoder().feed(out)
    assert relay.failure is not None and relay.failure.message == orjson.loads(event.data)["error"]["message"]
    return relay.failure.message


def _chat_error_chunk(text: str) -> str:
    relay = ChatRelay(CALL)
    relay.start()
    out = relay.feed(b"data: " + orjson.dumps({"error": {"message": text, "type": "server_error"}}) + b"\n\n")
    [event] = SseDecoder().feed(out)
    assert relay.failure is not None and relay.failure.message == orjson.loads(event.data)["error"]["message"]
    return relay.failure.message


PATHS = {
    "error-status": _error_status,
    "native-error-event": _native_error_event,
    "chat-error-chunk": _chat_error_chunk,
}


@pytest.mark.parametrize("path", PATHS.values(), ids=PATHS.keys())
@pytest.mark.parametrize(("text", "seen"), SECRETS, ids=[seen for _, seen in SECRETS])
def test_every_path_from_upstream_text_to_the_client_is_scrubbed(path, text, seen):
    message = path(text)
    assert _secret(text) not in message
    assert seen in message


def test_a_secret_cut_by_the_length_bound_shows_no_part_of_itself():
    for at in range(960, 1010):
        message = upstream_message(
            orjson.dumps({"error": {"message": "x" * at + " gsk_4fQ2kLmN8pRsTuVwXyZa0123 " * 3}})
        )
        assert len(message) <= 1000 and "gsk_4f" not in message, at
