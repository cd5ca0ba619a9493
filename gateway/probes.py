"""Endpoints for machines, none of which needs a client key: `/metrics` for Prometheus
(behind `server.metrics_token` when one is set), `/healthz` and `/readyz` for Kubernetes
probes.

- `/healthz`: the process is serving (always 200 while it answers at all).
- `/readyz`: it should get traffic: startup finished (configuration loaded, store,
  limiter and routes in place) and the store answers a PING within `READY_TIMEOUT`
  seconds. Otherwise 503 with the reason.
"""

from __future__ import annotations

import asyncio
from types import MappingProxyType

from aiohttp import web

from gateway.bearer import check_bearer
from gateway.errors import GatewayError
from gateway.observe.metrics import METRICS
from gateway.responses import json_response
from gateway.runtime import RUNTIME

# Seconds a readiness PING may take before the store counts as unreachable.
READY_TIMEOUT = 1.0


# A probe's answer is of this moment: no cache in between may keep it.
NO_STORE = MappingProxyType({"cache-control": "no-store"})


async def metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    token = runtime.config.server.metrics_token
    if token is not None:
        check_bearer(
            request,
            token,
            runtime.operator_failures,
            realm="gateway metrics",
            wrong="/metrics: missing or wrong metrics token (send `Authorization: Bearer <server.metrics_token>`)",
        )
    body, content_type = request.app[METRICS].exposition(request.headers.get("accept", ""))
    return web.Response(body=body, headers={"content-type": content_type, "cache-control": "no-store"})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"}, headers=NO_STORE)


async def readyz(request: web.Request) -> web.Response:
    reason = await not_ready(request.app)
    if reason is not None:
        return json_response({"status": "unavailable", "reason": reason}, status=503, headers=NO_STORE)
    return json_response({"status": "ready"}, headers=NO_STORE)


async def not_ready(app: web.Application) -> str | None:
    """Why the gateway should not get traffic now, or None."""
    runtime = app[RUNTIME]
    if runtime.store is None or runtime.auth is None or runtime.admission is None:
        return "starting: the configuration is not in place yet"
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await runtime.store.ping()
    except TimeoutError:
        return f"the store did not answer a PING within {READY_TIMEOUT:g}s"
    except GatewayError as exc:  # the store's own words, which never include its URL
        return exc.message
    except Exception as exc:  # never the exception's text: it may hold the URL and its password
        return f"the store cannot be reached ({type(exc).__name__})"
    return None
