"""`build_admin_app()`: the admin API as a nested aiohttp application.

The main app mounts it with `app.add_subapp("/admin", build_admin_app())`. It keeps no
state of its own: the store and the admin token are read per request from the parent's
`Runtime` (`request.config_dict[RUNTIME]`), so a config reload that swaps them needs
nothing here. The parent's `edge` middleware wraps these requests too (request id, error
bodies, access log); this app adds the token check, and refuses unknown query parameters.
"""

from __future__ import annotations

from aiohttp import web

from gateway.admin.handlers import OPENAPI, ROUTE_TABLE
from gateway.admin.openapi import Handler, Route
from gateway.admin.routes import ROUTES
from gateway.bearer import check_bearer
from gateway.errors import InvalidRequest, NotFound
from gateway.runtime import RUNTIME


@web.middleware
async def admin_token(request: web.Request, handler) -> web.StreamResponse:
    """Runs for every path under the mount point, unknown ones and wrong methods included,
    so without the token nothing about the admin API can be learnt."""
    runtime = request.config_dict[RUNTIME]
    token = runtime.config.admin.token
    if token is None:
        # The admin API is off: answer as for any path the gateway does not serve.
        raise NotFound(f"{request.method} {request.path}: no such endpoint")
    # Repeated failures from one address are throttled (429) before the token is compared.
    check_bearer(
        request,
        token,
        runtime.operator_failures,
        realm="gateway admin",
        wrong="admin API: missing or wrong admin token (send `Authorization: Bearer <admin.token>`)",
    )
    return await handler(request)


def _known_query(route: Route) -> Handler:
    """Unknown query parameters are refused, as unknown body fields are: a misspelt
    `?teem=` silently listing every key would mislead."""
    allowed = set(route.query)

    async def handler(request: web.Request) -> web.StreamResponse:
        unknown = sorted(set(request.query) - allowed)
        if unknown:
            raise InvalidRequest(f"unknown query parameter(s): {', '.join(unknown)}")
        return await route.handler(request)

    return handler


def build_admin_app() -> web.Application:
    admin = web.Application(middlewares=[admin_token])
    admin[ROUTE_TABLE] = ROUTES
    admin[OPENAPI] = {}
    for route in ROUTES:
        admin.router.add_route(route.method, route.path, _known_query(route))
    return admin
