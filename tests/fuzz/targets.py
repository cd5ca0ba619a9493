"""Where the fuzz sends, and how a body is written: shared by both generators."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from tests.fuzz.stack import CLIENT_KEY
from tests.fuzz.wire import Example

MESSAGES, COUNT_TOKENS = "/v1/messages", "/v1/messages/count_tokens"
JSON_HEADERS = (("content-type", b"application/json"),)


@dataclass(frozen=True)
class Target:
    """An endpoint, the model the backend under test is asked for by name, and whether a
    Messages request asks for a stream."""

    path: str
    model: str
    stream: bool  # asked for in Messages requests (count_tokens never streams)


def targets(model: str) -> list[Target]:
    """Every way a model is asked: a complete answer, a stream, a token count."""
    return [Target(MESSAGES, model, False), Target(MESSAGES, model, True), Target(COUNT_TOKENS, model, False)]


def auth() -> tuple[str, bytes]:
    return ("x-api-key", CLIENT_KEY.encode())


def encode(body: Any) -> bytes:
    """JSON bytes. `orjson.Fragment`s stand for what Python cannot build cheaply (nesting
    orjson would refuse to write, numbers outside 64 bits); an integer outside 64 bits
    drawn by the schema generator is written by the standard library instead."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode()


def asks_for_stream(path: str, raw: bytes) -> bool:
    """Whether the gateway reads `raw` as a Messages request for a stream. Read from the
    bytes, not from the target: a mutation may have changed or broken `stream`."""
    if path != MESSAGES:
        return False
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("stream") is True


def example(target: Target, body: Any, summary: str, headers: tuple[tuple[str, bytes], ...] | None = None) -> Example:
    raw = body if isinstance(body, bytes) else encode(body)
    return Example(target.path, raw, headers or (auth(), *JSON_HEADERS), summary, asks_for_stream(target.path, raw))
