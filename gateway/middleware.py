"""The HTTP edge: request id, every failure as a Messages error body, one access-log line.

This is the only place (with the stream pump, for errors after the first byte) that
turns a `GatewayError` into bytes. An unexpected exception is logged once with its
traceback and answered as a plain `api_error`, never with the traceback.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiohttp import web

from gateway.errors import GatewayError, InvalidRequest, MethodNotAllowed, NotFound, RequestTooLarge
from gateway.exchange import Exchange
from gateway.keys import EXCHANGE, RUNTIME

log = logging.getLogger("gateway")
access_log = logging.getLogger("gateway.access")


def error_response(error: GatewayError, exchange: Exchange) -> web.Response:
    exchange.error_type = error.error_type
    headers = {**exchange.ratelimit_headers, **error.response_headers()}
    headers["request-id"] = exchange.request_id
    return web.Response(
        status=error.status,
        body=orjson.dumps(error.body(exchange.request_id)),
        content_type="application/json",
        headers=headers,
    )


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> GatewayError:
    if exc.status == 404:
        return NotFound(f"{request.method} {request.path}: no such endpoint")
    if exc.status == 405:
        return MethodNotAllowed(f"{request.method} {request.path}: method not allowed")
    if exc.status == 413:
        limit = request.app[RUNTIME].config.server.max_body_bytes
        return RequestTooLarge(f"request body is larger than the gateway accepts ({limit} bytes)")
    return InvalidRequest(exc.reason or f"HTTP {exc.status}")


@web.middleware
async def edge(request: web.Request, handler) -> web.StreamResponse:
    exchange = Exchange(method=request.method, path=request.path)
    request[EXCHANGE] = exchange
    try:
        response = await handler(request)
    except GatewayError as error:
        response = error_response(error, exchange)
    except web.HTTPException as exc:
        response = error_response(_from_http_exception(exc, request), exchange)
    except asyncio.CancelledError:
        exchange.status = 499  # the client went away; nobody reads an answer
        exchange.error_type = "client_disconnected"
        write_access_log(exchange)
        raise
    except Exception:
        log.exception("unexpected error handling %s %s (request %s)", request.method, request.path, exchange.request_id)
        response = error_response(GatewayError("internal error in the gateway"), exchange)
    if not response.prepared:
        response.headers["request-id"] = exchange.request_id
    if not exchange.status:
        exchange.status = response.status
    write_access_log(exchange)
    return response


def write_access_log(exchange: Exchange) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    line = {
        "request_id": exchange.request_id,
        "method": exchange.method,
        "path": exchange.path,
        "status": exchange.status,
        "team": exchange.team_id,
        "key_id": exchange.key_id,
        "model": exchange.model,
        "backend": exchange.backend,
        "upstream_model": exchange.upstream_model,
        "stream": exchange.stream,
        "error_type": exchange.error_type,
        "duration_ms": round(exchange.elapsed() * 1000, 2),
        "upstream_ms": round(exchange.upstream_seconds * 1000, 2),
    }
    if exchange.first_token_seconds is not None:
        line["ttft_ms"] = round(exchange.first_token_seconds * 1000, 2)
    if exchange.usage:
        line["input_tokens"] = exchange.usage.get("input_tokens")
        line["output_tokens"] = exchange.usage.get("output_tokens")
        line["cache_read_input_tokens"] = exchange.usage.get("cache_read_input_tokens")
        line["usage_estimated"] = exchange.usage_estimated
    access_log.info(orjson.dumps(line).decode())
