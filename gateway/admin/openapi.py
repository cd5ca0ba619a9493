"""The admin API's OpenAPI 3.1 document, drawn from the route table and the pydantic models.

Nothing here is written per route by hand: each `Route` names its body and answer
models, and the error statuses follow from its shape (every route may refuse its input
with 400 and needs the admin token, whose guessing is throttled with 429; an id in the
path can be unknown), plus the extra statuses it lists. Schemas come from
`model_json_schema` (request bodies in validation mode, answers in serialization mode),
so the document cannot disagree with what the handlers accept and return; schemathesis
holds the server to it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from gateway.admin.models import ErrorBody

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REF = "#/components/schemas/{model}"
SECURITY_SCHEME = "admin_token"
_PATH_PARAM = re.compile(r"\{(\w+)\}")

ERROR_MEANINGS = {
    400: "invalid input: the message names the offending field or query parameter",
    401: "missing or wrong admin token",
    404: "no such id",
    409: "a conflict: the id is taken, or the team still has keys",
    429: "too many failed admin-token attempts from this address: retry after `retry-after` seconds",
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # below the mount prefix, in aiohttp's (and OpenAPI's) `{name}` syntax
    handler: Handler
    operation_id: str
    summary: str
    body: type[BaseModel] | None = None
    body_required: bool = True
    answer: type[BaseModel] | None = None  # None: any JSON object
    status: int = 200
    errors: tuple[int, ...] = ()  # beyond those that follow from the route's shape
    query: dict[str, str] = field(default_factory=dict)  # optional string parameters → description

    def error_statuses(self) -> list[int]:
        # 400: a bad body, or an unknown query parameter; 429: token guesses throttled (gateway/bearer.py).
        statuses = {400, 401, 429, *self.errors}
        if _PATH_PARAM.search(self.path):
            statuses.add(404)
        return sorted(statuses)


def document(routes: tuple[Route, ...], prefix: str = "/admin") -> dict:
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorBody, "serialization")]
    for route in routes:
        if route.body is not None:
            wanted.append((route.body, "validation"))
        if route.answer is not None:
            wanted.append((route.answer, "serialization"))
    refs, schemas = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF)

    def content(model: type[BaseModel] | None, mode: JsonSchemaMode) -> dict:
        schema = refs[(model, mode)] if model is not None else {"type": "object"}
        return {"application/json": {"schema": schema}}

    error_ref = content(ErrorBody, "serialization")
    paths: dict[str, dict] = {}
    for route in routes:
        operation: dict = {"operationId": route.operation_id, "summary": route.summary}
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PATH_PARAM.findall(route.path)
        ]
        parameters += [
            {"name": name, "in": "query", "required": False, "description": text, "schema": {"type": "string"}}
            for name, text in route.query.items()
        ]
        if parameters:
            operation["parameters"] = parameters
        if route.body is not None:
            operation["requestBody"] = {"required": route.body_required, "content": content(route.body, "validation")}
        responses = {
            str(route.status): {"description": route.summary, "content": content(route.answer, "serialization")}
        }
        for status in route.error_statuses():
            responses[str(status)] = {"description": ERROR_MEANINGS[status], "content": error_ref}
        operation["responses"] = responses
        paths.setdefault(prefix + route.path, {})[route.method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gateway admin API",
            "version": "1",
            "description": "Teams and API keys. A key is shown once, in the answer that creates or rotates it.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the `admin.token` of the configuration",
                }
            },
        },
        "security": [{SECURITY_SCHEME: []}],
    }
