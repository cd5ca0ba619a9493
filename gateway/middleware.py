"""The HTTP edge: request id, every failure as a Messages error body, and, once per
request at its end, the metrics and one JSON access-log line, both read from the Exchange.

This is the only place (with the stream pump, for errors after the first byte) that
turns a `GatewayError` into bytes. An unexpected exception is logged once with its
traceback and answered as a plain `api_error`, never with the traceback. Every response
carries `x-gateway-overhead-ms` (`on_response_prepare`).
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus

import orjson
from aiohttp import web

from gateway.errors import GatewayError, InvalidRequest, MethodNotAllowed, NotFound, RequestTooLarge
from gateway.exchange import Exchange, new_request_id
from gateway.observe.metrics import METRICS
from gateway.responses import json_response
from gateway.runtime import EXCHANGE, RUNTIME

log = logging.getLogger("gateway")

# Milliseconds the gateway itself spent on the request (as LiteLLM's
# `x-litellm-overhead-duration-ms`); see `on_response_prepare`.
OVERHEAD_HEADER = "x-gateway-overhead-ms"
# Set on a request whose stream was opened (the open-streams gauge counts it until its end).
STREAM_OPENED: web.RequestKey[bool] = web.RequestKey("stream_opened", bool)


def error_response(error: GatewayError, exchange: Exchange) -> web.Response:
    exchange.error_type = error.error_type
    headers = {**exchange.ratelimit_headers, **error.response_headers()}
    headers["request-id"] = exchange.request_id
    return json_response(error.body(exchange.request_id), status=error.status, headers=headers)


def raw_error_response(error: GatewayError) -> bytes:
    """A whole HTTP/1.1 answer, for the connection layer (`connections.py`) to write
    where no request object exists: a connection refused at accept, or one whose
    headers never arrived. It always closes the connection."""
    request_id = new_request_id()
    body = orjson.dumps(error.body(request_id))
    headers = {
        **error.response_headers(),
        "content-type": "application/json",
        "content-length": str(len(body)),
        "request-id": request_id,
        "connection": "close",
    }
    head = f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> GatewayError:
    if exc.status == 404:
        return NotFound(f"{request.method} {request.path}: no such endpoint")
    if exc.status == 405:
        return MethodNotAllowed(f"{request.method} {request.path}: method not allowed")
    if exc.status == 413:
        limit = request.app[RUNTIME].config.server.max_body_bytes
        return RequestTooLarge(f"request body is larger than the gateway accepts ({limit} bytes)")
    return InvalidRequest(exc.reason or f"HTTP {exc.status}")


def _served_here(request: web.Request) -> bool:
    """Whether the listener the request came in on answers its path: with
    `server.admin_listen` set, the operator's paths are served on that listener only
    (`connections.Listener.serves`)."""
    listener = getattr(request.protocol, "listener", None)
    serves = listener.serves if listener is not None else None
    return serves is None or serves(request.path)


@web.middleware
async def edge(request: web.Request, handler) -> web.StreamResponse:
    exchange = Exchange(method=request.method, path=request.path)
    request[EXCHANGE] = exchange
    app = request.app
    metrics = app[METRICS]
    runtime = app[RUNTIME]
    task = asyncio.current_task()
    assert task is not None  # aiohttp serves every request in a task
    runtime.in_flight.add(task)
    operation = metrics.request_started(exchange.path)
    try:
        try:
            if not _served_here(request):
                raise NotFound(f"{request.method} {request.path}: no such endpoint")
            response = await handler(request)
        except GatewayError as error:
            response = error_response(error, exchange)
        except web.HTTPException as exc:
            response = error_response(_from_http_exception(exc, request), exchange)
        except asyncio.CancelledError:
            exchange.status = 499  # the client went away; nobody reads an answer
            exchange.error_type = "client_disconnected"
            raise
        except Exception:
            log.exception(
                "unexpected error handling %s %s (request %s)", request.method, request.path, exchange.request_id
            )
            response = error_response(GatewayError("internal error in the gateway"), exchange)
        if not exchange.status:
            exchange.status = response.status
        if not response.prepared:
            response.headers["request-id"] = exchange.request_id
            # Sent now rather than after this function: the bookkeeping below (metrics,
            # the access log) then costs the client no latency.
            try:
                await response.prepare(request)
                await response.write_eof()
            except ConnectionError:
                exchange.error_type = exchange.error_type or "client_disconnected"
        return response
    finally:
        # Once per request, from what the request path recorded in the Exchange.
        elapsed = exchange.elapsed()
        try:
            metrics.request_finished(exchange, operation, elapsed, streamed=request.get(STREAM_OPENED, False))
        except Exception:  # a bug in the metrics must not cost the client its answer
            log.exception("could not record the metrics of request %s", exchange.request_id)
        if exchange.path not in QUIET_PATHS or exchange.status >= 400:
            access_log = runtime.access_log
            if access_log.enabled():
                access_log.write(access_line(exchange, elapsed))
        runtime.in_flight.discard(task)


# Probes and scrapes arrive every few seconds from every prober: a line each would bury
# the requests that matter. They still count in the metrics, and failures are logged.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Just before any response's headers go out: what the gateway itself cost so far.

    A complete answer is prepared after its handler returned: its elapsed time minus the
    time spent waiting on the upstream. A stream is prepared by its handler, before the
    body: the header says what was known then (the time so far minus the upstream time
    recorded so far), and the full figure is in the metrics and the access log."""
    exchange = request.get(EXCHANGE)
    if exchange is None:  # refused before the edge (a malformed HTTP request)
        return
    overhead = exchange.elapsed() - exchange.upstream_seconds
    response.headers[OVERHEAD_HEADER] = f"{max(overhead, 0.0) * 1000:.2f}"
    if not exchange.status and not request.get(STREAM_OPENED, False):  # prepared by its handler: a stream
        request[STREAM_OPENED] = True
        request.config_dict[METRICS].stream_opened()


def access_line(exchange: Exchange, elapsed: float) -> dict:
    """The access log's object for a request. Never a key (only its id), a prompt or an answer."""
    line = {
        "request_id": exchange.request_id,
        "method": exchange.method,
        "path": exchange.path,
        "status": exchange.status,
        "team": exchange.team_id,
        "key_id": exchange.key_id,
        "model": exchange.model,
        "served_model": exchange.served_model,
        "backend": exchange.backend,
        "upstream_model": exchange.upstream_model,
        "stream": exchange.stream,
        "error_type": exchange.error_type,
        "duration_ms": round(elapsed * 1000, 2),
        "upstream_ms": round(exchange.upstream_seconds * 1000, 2),
        "overhead_ms": round(max(elapsed - exchange.upstream_seconds, 0.0) * 1000, 2),
    }
    if exchange.first_token_seconds is not None:
        line["ttft_ms"] = round(exchange.first_token_seconds * 1000, 2)
    if exchange.usage:
        line["input_tokens"] = exchange.usage.get("input_tokens")
        line["output_tokens"] = exchange.usage.get("output_tokens")
        line["cache_read_input_tokens"] = exchange.usage.get("cache_read_input_tokens")
        line["cache_creation_input_tokens"] = exchange.usage.get("cache_creation_input_tokens")
        line["usage_estimated"] = exchange.usage_estimated
    if exchange.retries:
        line["retries"] = exchange.retries
    if exchange.fallbacks:
        line["fallbacks"] = exchange.fallbacks
    if exchange.panic:  # every deployment was cooling down: sent to the first to reopen
        line["panic"] = True
    if exchange.upstream_errors:
        line["upstream_errors"] = [f"{backend}:{kind}" for backend, kind in exchange.upstream_errors]
    if exchange.rejected_limit is not None:
        line["rejected_limit"] = exchange.rejected_limit
    return line
