"""Thin endpoints: each calls the steps of a request in order and owns no logic of its own."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from gateway import dispatch, streaming
from gateway.auth import TEAM_HEADER, Authenticator
from gateway.backends.base import FORWARDED_ANTHROPIC_HEADERS, Deployment
from gateway.errors import InvalidRequest, NotFound
from gateway.exchange import Exchange
from gateway.identity import Principal
from gateway.protocols.messages import unknown_fields, validate_request
from gateway.responses import JSON, json_response
from gateway.routing import Plan, Router, allowed, may_ask, permitted
from gateway.runtime import EXCHANGE, RUNTIME, Routes
from gateway.streaming import BACKEND_HEADER

log = logging.getLogger(__name__)


async def read_json(request: web.Request) -> object:
    content_type = request.content_type
    if content_type != JSON and not content_type.endswith("+json"):
        raise InvalidRequest(f"Content-Type must be application/json, got {content_type or 'none'}")
    raw = await request.read()  # over the size limit: 413 from aiohttp, mapped at the edge
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


def client_headers(request: web.Request) -> dict[str, str]:
    return {name: request.headers[name] for name in FORWARDED_ANTHROPIC_HEADERS if name in request.headers}


# Client headers the gateway takes as text: forwarded to native backends, or echoed in an
# answer. HTTP lets a value carry bytes past ASCII, which aiohttp hands over decoded (as
# UTF-8, surrogate-escaped when they are not); none of these headers has a use for them,
# and they must not reach an upstream or break the encoding of an error body.
TEXT_HEADERS = (*FORWARDED_ANTHROPIC_HEADERS, TEAM_HEADER)


def check_text_headers(request: web.Request) -> None:
    for name in TEXT_HEADERS:
        for value in request.headers.getall(name, ()):
            if not (value.isascii() and value.isprintable()):
                raise InvalidRequest(f"{name}: a header value must be printable ASCII")


async def authenticate(request: web.Request, auth: Authenticator, routes: Routes) -> Principal:
    """The principal the request runs as; `routes`: the snapshot the request took, whose
    pass-through narrowing the team gets."""
    check_text_headers(request)  # first: auth reads x-team-id
    principal = await auth.authenticate(request.headers)
    exchange = request[EXCHANGE]
    exchange.team_id, exchange.key_id = principal.team_id, principal.key_id
    exchange.team_passthrough = routes.team_passthrough.get(principal.team_id)
    return principal


async def messages(request: web.Request) -> web.StreamResponse:
    exchange = request[EXCHANGE]
    runtime = request.app[RUNTIME]
    # This request's routes and routing settings: a reload meanwhile does not change them.
    routes = runtime.routes
    auth, admission = runtime.serving()
    principal = await authenticate(request, auth, routes)
    body = validate_request(await read_json(request), routes.config.server)
    exchange.model = body["model"]
    exchange.stream = bool(body.get("stream"))
    if log.isEnabledFor(logging.DEBUG):
        extra = unknown_fields(body)
        if extra:
            log.debug("request %s has undocumented fields %s; kept for native backends", exchange.request_id, extra)
    router, config = routes.router, routes.config
    plans = permitted(router, principal, body["model"])
    exchange.served_model = plans[0].model.name
    admitted = await admission.admit_request(principal, router, plans, body, exchange)
    headers = client_headers(request)

    def may_use(plan: Plan) -> bool:  # context fallbacks the team may not use are skipped
        return allowed(principal, plan)

    try:
        if exchange.stream:
            stream, deployment = await dispatch.run(
                router,
                config.routing,
                plans,
                lambda d: d.backend.open_stream(body, d, headers, exchange),
                exchange,
                allowed=may_use,
                judged_later=True,
            )
            served_by(exchange, deployment)
            completed = False
            try:
                response = await streaming.respond(request, exchange, stream)
                completed = True
                return response
            finally:
                router.finished(deployment)
                dispatch.stream_ended(router, deployment, exchange, completed=completed)
        answer, deployment = await dispatch.run(
            router,
            config.routing,
            plans,
            lambda d: d.backend.send(body, d, headers, exchange),
            exchange,
            allowed=may_use,
        )
        router.finished(deployment)
        served_by(exchange, deployment)
        exchange.usage = answer.get("usage")
        response = json_response(answer)
        response.headers.update(exchange.ratelimit_headers)
        response.headers[BACKEND_HEADER] = deployment.backend_name
        return response
    finally:
        admission.settle_request(admitted, exchange)  # exactly once, whatever happened


def served_by(exchange: Exchange, deployment: Deployment) -> None:
    exchange.backend = deployment.backend_name
    exchange.upstream_model = deployment.upstream_model
    if exchange.fallbacks:
        exchange.served_model = exchange.fallbacks[-1]


async def count_tokens(request: web.Request) -> web.Response:
    exchange = request[EXCHANGE]
    runtime = request.app[RUNTIME]
    # This request's routes and routing settings: a reload meanwhile does not change them.
    routes = runtime.routes
    auth, admission = runtime.serving()
    principal = await authenticate(request, auth, routes)
    body = validate_request(await read_json(request), routes.config.server)
    exchange.model = body["model"]
    # Counted by the model that would serve the same request to /v1/messages.
    plan = permitted(routes.router, principal, body["model"])[0]
    await admission.admit_count(principal, plan, exchange)
    deployment = plan.primary
    exchange.backend = deployment.backend_name
    response = json_response(await deployment.backend.count_tokens(body, deployment, client_headers(request), exchange))
    response.headers.update(exchange.ratelimit_headers)
    return response


def _model_entry(router: Router, name: str) -> dict:
    plan = router.resolve(name)
    model = plan.model
    display = model.display_name or model.name
    return {"type": "model", "id": name, "display_name": display, "created_at": model.created_at}


async def list_models(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    routes = runtime.routes
    principal = await authenticate(request, runtime.serving()[0], routes)
    router = routes.router
    names = [name for name in router.names() if may_ask(router, principal, name)]
    query = request.query
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise InvalidRequest("limit: Input should be a valid integer") from None
    if not 1 <= limit <= 1000:
        raise InvalidRequest("limit: Input should be between 1 and 1000")
    after, before = query.get("after_id"), query.get("before_id")
    if after is not None and before is not None:
        raise InvalidRequest("after_id and before_id cannot both be given")
    if after is not None:
        if after not in names:
            raise InvalidRequest(f"after_id: unknown model id {after!r}")
        window = names[names.index(after) + 1 :]
        page, has_more = window[:limit], len(window) > limit
    elif before is not None:
        if before not in names:
            raise InvalidRequest(f"before_id: unknown model id {before!r}")
        window = names[: names.index(before)]
        page, has_more = window[-limit:], len(window) > limit
    else:
        page, has_more = names[:limit], len(names) > limit
    data = [_model_entry(router, name) for name in page]
    return json_response(
        {
            "data": data,
            "has_more": has_more,
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        }
    )


async def get_model(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    routes = runtime.routes
    principal = await authenticate(request, runtime.serving()[0], routes)
    name = request.match_info["model_id"]
    router = routes.router
    if not may_ask(router, principal, name):
        raise NotFound(f"model: {name}")  # what a team may not use, it does not see
    return json_response(_model_entry(router, name))


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})
