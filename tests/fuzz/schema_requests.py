"""Requests generated from the Messages request schema
(tests/fixtures/messages/request.schema.json) by schemathesis: ones it calls valid
(positive mode) and ones it calls invalid (negative mode), as `Example`s aimed at the
backend under test.

schemathesis generates from an OpenAPI document, so the schema is wrapped into one
(`openapi_document`), with both endpoints and the headers a client may add.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from tests.fuzz.targets import COUNT_TOKENS, MESSAGES, Target, asks_for_stream, auth, encode
from tests.fuzz.wire import Example

SCHEMA = Path(__file__).parent.parent / "fixtures" / "messages" / "request.schema.json"


@cache
def request_schema() -> dict:
    return json.loads(SCHEMA.read_text())


# Sizes the generated requests keep to where the schema sets none. Left unbounded, the
# schema generator spends a second an example building 50 KB bodies of nested blocks;
# size is the hostile mutations' business (huge strings, many messages), shape is this one's.
GENERATED_ITEMS, GENERATED_LENGTH, GENERATED_PROPERTIES = 3, 40, 6


def _bounded(node: Any) -> None:
    if isinstance(node, list):
        for inner in node:
            _bounded(inner)
        return
    if not isinstance(node, dict):
        return
    kinds = node.get("type") if isinstance(node.get("type"), list) else [node.get("type")]
    if "array" in kinds:
        node.setdefault("maxItems", GENERATED_ITEMS)
    if "string" in kinds and "pattern" not in node:
        node.setdefault("maxLength", GENERATED_LENGTH)
    if "object" in kinds:
        node.setdefault("maxProperties", GENERATED_PROPERTIES)
    for inner in node.values():
        _bounded(inner)


def openapi_document() -> dict:
    """Both endpoints with the request schema as their body, its `$defs` moved under
    `components/schemas` (where an OpenAPI document's references point), and the two
    headers a client may add (`anthropic-version`, `anthropic-beta`) as parameters.
    Arrays, strings and objects are bounded for generation (`GENERATED_ITEMS`...); a
    schema-invalid case may then be one only this bound refuses, and the gateway rightly
    accepts it (the tests ask of an invalid case no more than an answer that is not a 5xx)."""
    schema = copy.deepcopy(request_schema())
    definitions = schema.pop("$defs")
    for key in ("$schema", "$id"):
        schema.pop(key, None)
    text = json.dumps({"MessagesRequest": schema, **definitions}).replace("#/$defs/", "#/components/schemas/")
    headers = [
        {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
        for name in ("anthropic-version", "anthropic-beta")
    ]
    operation = {
        "parameters": headers,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MessagesRequest"}}},
        },
        "responses": {"200": {"description": "the answer"}},
    }
    document = {
        "openapi": "3.1.0",
        "info": {"title": "gateway Messages API", "version": "1"},
        "paths": {MESSAGES: {"post": operation}, COUNT_TOKENS: {"post": copy.deepcopy(operation)}},
        "components": {"schemas": json.loads(text)},
    }
    _bounded(document["components"])
    return document


def from_case(case: Any, target: Target, *, valid: bool) -> Example:
    """A schemathesis case aimed at the backend under test: its model replaced by the
    backend's (a random name would only ever be a 404) unless the case broke the model
    itself, and `stream` set as the target asks unless the case broke that."""
    body = case.body
    if isinstance(body, dict):
        body = dict(body)
        if isinstance(body.get("model"), str) or (valid and "model" in body):
            body["model"] = target.model
        if target.path == MESSAGES and (valid or isinstance(body.get("stream"), bool | None)):
            body["stream"] = target.stream
    raw = body if isinstance(body, bytes) else encode(body)
    headers = [auth(), ("content-type", (case.media_type or "application/json").encode())]
    headers += [(name, str(value).encode()) for name, value in (case.headers or {}).items()]
    summary = f"{'schema-valid' if valid else 'schema-invalid'} request from the Messages schema"
    return Example(target.path, raw, tuple(headers), summary, asks_for_stream(target.path, raw))
