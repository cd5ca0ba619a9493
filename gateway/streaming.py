"""The pump: upstream bytes → relay → client, as they arrive, for every backend.

The only streaming code that touches sockets. It owns what every protocol pair shares:
the response headers (including ones that stop proxies from buffering), `ping` events
while the upstream is silent, time to first token, the idle timeout, the in-band `error`
event once the 200 is committed, and cancelling the upstream the moment the client
leaves (the handler is cancelled; leaving the `async with` closes the upstream socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

import aiohttp
from aiohttp import web

from gateway.backends.base import Deployment
from gateway.errors import GatewayError, Overloaded, UpstreamTimeout
from gateway.exchange import Exchange
from gateway.keys import RUNTIME
from gateway.protocols.sse import encode_json

log = logging.getLogger(__name__)

SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}
PING = encode_json({"type": "ping"})
# Which backend served the answer (its name in the config; never its URL or key).
BACKEND_HEADER = "x-gateway-backend"
# After `[DONE]` some servers still send usage (llama.cpp); wait this long for it.
AFTER_DONE_GRACE = 0.5


class Relay(Protocol):
    finished: bool
    has_content: bool
    done: bool

    @property
    def usage(self) -> dict: ...

    @property
    def usage_reported(self) -> bool: ...

    def start(self) -> bytes: ...
    def feed(self, data: bytes) -> bytes: ...
    def end(self) -> bytes: ...
    def fail(self, error: GatewayError) -> bytes: ...


class _ClientGone(Exception):
    """A write to the client failed: it disconnected."""


async def _write(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionError as exc:  # aiohttp's ClientConnectionResetError is one
        raise _ClientGone() from exc


async def respond(
    request: web.Request, exchange: Exchange, deployment: Deployment, upstream: aiohttp.ClientResponse, relay: Relay
) -> web.StreamResponse:
    """Relay an opened upstream stream (status 200, body unread: `Backend.open_stream`)."""
    started = time.perf_counter()
    try:
        response = web.StreamResponse(
            status=200,
            headers={
                **SSE_HEADERS,
                **exchange.ratelimit_headers,
                BACKEND_HEADER: deployment.backend_name,
                "request-id": exchange.request_id,
            },
        )
        await response.prepare(request)
        exchange.status = 200
        ping_interval = request.app[RUNTIME].config.server.ping_interval
        idle = deployment.backend.config.timeouts.idle
        try:
            first = relay.start()
            if first:
                await _write(response, first)
            await _pump(upstream, relay, response, exchange, ping_interval=ping_interval, idle=idle)
            await response.write_eof()
        except _ClientGone:
            exchange.error_type = "client_disconnected"
        except ConnectionError:
            exchange.error_type = "client_disconnected"  # at write_eof
        return response
    finally:
        # Also when the client left mid-stream: what it was sent is what it used.
        exchange.usage = relay.usage
        exchange.usage_estimated = not relay.usage_reported
        exchange.upstream_seconds += time.perf_counter() - started
        # Closing (not releasing) an unfinished upstream response drops its connection, so
        # the upstream stops generating for a client that is gone.
        upstream.close()


async def _pump(
    upstream: aiohttp.ClientResponse,
    relay: Relay,
    response: web.StreamResponse,
    exchange: Exchange,
    *,
    ping_interval: float,
    idle: float,
) -> None:
    content = upstream.content
    loop = asyncio.get_running_loop()
    last_data = loop.time()
    try:
        while not relay.finished:
            # What has already arrived needs no timer (reads in a burst of chunks).
            data = content.read_nowait()
            if not data:
                if content.at_eof():
                    break
                wait = AFTER_DONE_GRACE if relay.done else min(ping_interval, idle)
                deadline = asyncio.timeout(wait)
                try:
                    async with deadline:
                        data = await content.readany()
                except TimeoutError:
                    if not deadline.expired():  # the upstream session's own total timeout
                        raise UpstreamTimeout("the model's backend took longer than its total timeout") from None
                    if relay.done:
                        break
                    if loop.time() - last_data >= idle:
                        raise UpstreamTimeout("the model's backend went silent mid-stream") from None
                    await _write(response, PING)
                    continue
                if not data:
                    break
            last_data = loop.time()
            out = relay.feed(data)
            if out:
                await _write(response, out)
                if exchange.first_token_seconds is None and relay.has_content:
                    exchange.first_token_seconds = exchange.elapsed()
        tail = relay.end()
    except GatewayError as error:
        exchange.error_type = error.error_type
        tail = relay.fail(error)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        exchange.error_type = "api_error"
        tail = relay.fail(GatewayError("the model's backend dropped the connection mid-stream"))
    except _ClientGone:
        raise
    except asyncio.CancelledError:
        # The client left (the writes fail, and are ignored), or the gateway is shutting down
        # and the drain deadline passed: the client gets a well-formed end, then the cancel
        # goes on.
        with contextlib.suppress(Exception):
            await response.write(relay.fail(Overloaded("the gateway is shutting down; retry the request")))
            await response.write_eof()
        raise
    except Exception:
        # A bug, not the upstream's fault; the 200 is committed, so the client still gets a
        # well-formed end rather than a stream cut inside a block.
        log.exception("unexpected error relaying stream (request %s)", exchange.request_id)
        exchange.error_type = "api_error"
        tail = relay.fail(GatewayError("internal error in the gateway"))
    if tail:
        await _write(response, tail)
