"""Thin endpoints: each calls the steps of a request in order and owns no logic of its own."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from gateway import dispatch, streaming
from gateway.admission import demand_for, usage_of
from gateway.backends.base import FORWARDED_ANTHROPIC_HEADERS, Deployment
from gateway.errors import InvalidRequest, NotFound, PermissionDenied
from gateway.exchange import Exchange
from gateway.identity import Principal
from gateway.keys import EXCHANGE, RUNTIME
from gateway.limiter import LimitExceeded, rate_limit_headers
from gateway.limiter.rules import needs_input_estimate
from gateway.protocols.messages import unknown_fields, validate_request
from gateway.routing import Plan, Router
from gateway.streaming import BACKEND_HEADER
from gateway.tokens import estimate_input_tokens

log = logging.getLogger(__name__)

JSON = "application/json"


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


def json_response(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type=JSON)


def client_headers(request: web.Request) -> dict[str, str]:
    return {name: request.headers[name] for name in FORWARDED_ANTHROPIC_HEADERS if name in request.headers}


async def authenticate(request: web.Request) -> Principal:
    principal = await request.app[RUNTIME].auth.authenticate(request.headers)
    exchange = request[EXCHANGE]
    exchange.team_id, exchange.key_id = principal.team_id, principal.key_id
    return principal


def authorize(principal: Principal, plan: Plan, asked: str) -> None:
    """One check, after aliases are resolved: the name asked for or the model it names."""
    if not principal.may_use(asked, plan.model.name):
        raise PermissionDenied(f"team '{principal.team_id}' may not use model '{asked}'")


async def messages(request: web.Request) -> web.StreamResponse:
    exchange = request[EXCHANGE]
    runtime = request.app[RUNTIME]
    principal = await authenticate(request)
    body = validate_request(await read_json(request))
    exchange.model = body["model"]
    exchange.stream = bool(body.get("stream"))
    if log.isEnabledFor(logging.DEBUG):
        extra = unknown_fields(body)
        if extra:
            log.debug("request %s has undocumented fields %s; kept for native backends", exchange.request_id, extra)
    # This request's routes and routing settings: a reload meanwhile does not change them.
    router, config = runtime.router, runtime.config
    plan = router.resolve(body["model"])
    authorize(principal, plan, body["model"])
    exchange.served_model = plan.model.name
    try:
        # Made here only when a limit counts it; else later, if a stream's message_start
        # or an answer without usage needs it (a 30–100 KB request takes ~50 µs).
        if needs_input_estimate(principal.team.limits, principal.key.limits):
            exchange.input_estimate = estimate_input_tokens(body)
        demand = demand_for(principal, plan, plan.primary, body, exchange.input_estimate or 0)
        ticket = await runtime.admission.admit(demand)
    except LimitExceeded as refused:
        exchange.rejected_limit = refused.limit
        raise
    exchange.ratelimit_headers = rate_limit_headers(ticket.windows)
    headers = client_headers(request)

    def allowed(name: str) -> bool:  # fallbacks the team may not use are skipped
        return principal.may_use(name, router.resolve(name).model.name)

    try:
        if exchange.stream:
            (upstream, relay), deployment = await dispatch.run(
                router, config.routing, plan,
                lambda d: d.backend.open_stream(body, d, headers, exchange), exchange, allowed=allowed,
                judged_later=True,
            )
            served_by(exchange, deployment)
            completed = False
            try:
                response = await streaming.respond(request, exchange, deployment, upstream, relay)
                completed = True
                return response
            finally:
                router.finished(deployment)
                dispatch.stream_ended(router, deployment, exchange, completed=completed)
        answer, deployment = await dispatch.run(
            router, config.routing, plan, lambda d: d.backend.send(body, d, headers, exchange), exchange, allowed=allowed
        )
        router.finished(deployment)
        served_by(exchange, deployment)
        exchange.usage = answer.get("usage")
        response = json_response(answer)
        response.headers.update(exchange.ratelimit_headers)
        response.headers[BACKEND_HEADER] = deployment.backend_name
        return response
    finally:
        # Exactly once, whatever happened: an upstream error settles what was used (nothing),
        # a client that left settles what it was sent.
        served = plan.model if exchange.served_model == plan.model.name else router.resolve(exchange.served_model).model
        pricing = served.pricing
        runtime.admission.settle(ticket, usage_of(exchange.usage, pricing))


def served_by(exchange: Exchange, deployment: Deployment) -> None:
    exchange.backend = deployment.backend_name
    exchange.upstream_model = deployment.upstream_model
    if exchange.fallbacks:
        exchange.served_model = exchange.fallbacks[-1]


async def count_tokens(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    principal = await authenticate(request)
    body = validate_request(await read_json(request))
    request[EXCHANGE].model = body["model"]
    plan = runtime.router.resolve(body["model"])
    authorize(principal, plan, body["model"])
    deployment = plan.primary
    request[EXCHANGE].backend = deployment.backend_name
    return json_response(await deployment.backend.count_tokens(body, deployment, client_headers(request)))


def _model_entry(router: Router, name: str) -> dict:
    plan = router.resolve(name)
    model = plan.model
    display = model.display_name or model.name
    return {"type": "model", "id": name, "display_name": display, "created_at": model.created_at}


async def list_models(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    principal = await authenticate(request)
    router = runtime.router
    names = [name for name in router.names() if principal.may_use(name, router.resolve(name).model.name)]
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
    data = [_model_entry(runtime.router, name) for name in page]
    return json_response(
        {"data": data, "has_more": has_more, "first_id": page[0] if page else None, "last_id": page[-1] if page else None}
    )


async def get_model(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    principal = await authenticate(request)
    name = request.match_info["model_id"]
    plan = runtime.router.resolve(name)
    if not principal.may_use(name, plan.model.name):
        raise NotFound(f"model: {name}")  # what a team may not use, it does not see
    return json_response(_model_entry(runtime.router, name))


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})
