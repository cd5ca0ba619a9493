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

from aiohttp import web

from gateway.backends.base import Relay, StreamHandle
from gateway.backends.http_client import BadResponse, Response, TooLarge, UpstreamError
from gateway.errors import GatewayError, Overloaded, UpstreamTimeout
from gateway.exchange import Exchange
from gateway.protocols.sse import encode_json
from gateway.runtime import RUNTIME

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


class _Silence:
    """Interrupts the pump's read once the upstream has been silent for `wait` seconds.

    `asyncio.timeout` around every read would do, but arming and cancelling a timer costs
    about 5 µs, and a stream reads once per token: most of what the gateway adds to a paced
    stream. Here one timer runs per `wait` seconds of stream: when it fires early (the read
    under way began later), it moves itself to the read's own deadline. Like
    `asyncio.timeout`, it interrupts by cancelling the task, and tells its cancellation
    from any other (`was_cause`). The pump sets `waiting_since` around each read; a read
    that completes in the same turn as the timer loses no data (`Response.read_some` takes
    the bytes only once its wait returns)."""

    __slots__ = ("_cancelling", "_handle", "_loop", "_task", "_wait", "fired", "waiting_since")

    def __init__(self, loop: asyncio.AbstractEventLoop, wait: float) -> None:
        task = asyncio.current_task(loop)
        assert task is not None
        self._loop, self._task, self._wait = loop, task, wait
        self._cancelling = task.cancelling()
        self.waiting_since: float | None = None
        self.fired = False
        self._handle = loop.call_at(loop.time() + wait, self._check)

    def shorten(self, wait: float) -> None:
        if wait < self._wait:
            self._wait = wait
            self._handle.cancel()
            self._handle = self._loop.call_at(self._loop.time() + wait, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        since = self.waiting_since
        if since is not None and now - since >= self._wait:
            self.fired = True
            self._task.cancel()
            due = now + self._wait
        else:
            # Timers may run up to a clock tick early; never re-arm in the past.
            due = max((now if since is None else since) + self._wait, now + 0.001)
        self._handle = self._loop.call_at(due, self._check)

    def was_cause(self) -> bool:
        """Whether the CancelledError being handled is this timer's alone (then it is
        withdrawn, as `asyncio.timeout` does)."""
        if not self.fired:
            return False
        self.fired = False
        return self._task.uncancel() <= self._cancelling

    def stop(self) -> None:
        self._handle.cancel()


class EventStreamResponse(web.StreamResponse):
    """A streamed response whose headers leave with its first body bytes, in one write.

    aiohttp's `StreamResponse` writes its headers alone the moment it is prepared; its
    `Response` holds them for the body. The choice is a private class attribute,
    `_send_headers_immediately`, with no public way to make it: `Response` itself holds
    the headers but refuses bytes in `write_eof` and chunking under HTTP/1.0, both of
    which a stream needs. Held headers save each stream a write (a syscall, and a packet
    of their own for the client to take); the client never waits on them, since the pump
    writes `message_start` before any wait on the upstream.

    This class is the one place the switch is set. `tests/unit/test_event_stream_headers.py`
    fails when aiohttp stops honouring it."""

    _send_headers_immediately = False


class _ClientGone(Exception):
    """A write to the client failed: it disconnected."""


async def _write(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionError as exc:  # aiohttp's ClientConnectionResetError is one
        raise _ClientGone() from exc


async def respond(request: web.Request, exchange: Exchange, stream: StreamHandle) -> web.StreamResponse:
    """Relay an opened upstream stream (status 200, body unread: `Backend.open_stream`)."""
    upstream, relay = stream.response, stream.relay
    started = time.perf_counter()
    try:
        response = EventStreamResponse(
            status=200,
            headers={
                **SSE_HEADERS,
                **exchange.ratelimit_headers,
                BACKEND_HEADER: stream.backend,
                "request-id": exchange.request_id,
            },
        )
        await response.prepare(request)
        exchange.status = 200
        ping_interval = request.app[RUNTIME].config.server.ping_interval
        try:
            # The headers and message_start leave with the first upstream bytes when they
            # are already here, else at once, before any wait (`_pump`); the last events
            # leave with the end of the body. A burst of chunks is then one write.
            tail = await _pump(
                upstream,
                relay,
                response,
                exchange,
                relay.start(),
                ping_interval=ping_interval,
                idle=stream.idle_timeout,
            )
            await response.write_eof(tail)
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
        # Closing an unfinished upstream response drops its connection, so the upstream
        # stops generating for a client that is gone.
        upstream.close()


async def _pump(
    upstream: Response,
    relay: Relay,
    response: web.StreamResponse,
    exchange: Exchange,
    head: bytes | None,
    *,
    ping_interval: float,
    idle: float,
) -> bytes:
    """Relay until the stream ends; what is left to write then (the closing events, or an
    `error` event), for the caller to send with the end of the body. `head`: the first
    bytes of the answer (message_start; may be empty), not yet written; later, bytes held
    back to leave with the end."""
    loop = asyncio.get_running_loop()
    last_data = loop.time()
    silence = _Silence(loop, min(ping_interval, idle))
    try:
        while not relay.finished:
            # What has already arrived needs no wait (reads in a burst of chunks).
            data = upstream.take()
            if not data:
                if upstream.at_eof():
                    break
                if head is not None:  # nothing to add it to: it must not wait for the upstream
                    await _write(response, head)
                    head = None
                if relay.done:
                    silence.shorten(AFTER_DONE_GRACE)
                silence.waiting_since = loop.time()
                try:
                    data = await upstream.read_some()
                except asyncio.CancelledError:
                    if not silence.was_cause():
                        raise
                    if relay.done:
                        break
                    if loop.time() - last_data >= idle:
                        raise UpstreamTimeout("the model's backend went silent mid-stream") from None
                    await _write(response, PING)
                    continue
                except TimeoutError:  # the call's own total timeout
                    raise UpstreamTimeout("the model's backend took longer than its total timeout") from None
                finally:
                    silence.waiting_since = None
                if not data:
                    break
            last_data = loop.time()
            out = relay.feed(data)
            if head is not None and out:
                out, head = head + out, None
            if out:
                if exchange.first_token_seconds is None and relay.has_content:
                    exchange.first_token_seconds = exchange.elapsed()
                if upstream.at_eof():  # the answer's last bytes: they leave with its end, one write
                    head = out
                    continue
                await _write(response, out)
        tail = relay.end()
    except GatewayError as error:  # the upstream went silent, or past its total timeout
        _failed(exchange, error, "stream_timeout" if isinstance(error, UpstreamTimeout) else "stream_protocol")
        tail = relay.fail(error)
    except UpstreamError as exc:
        broken = GatewayError(
            f"the model's backend sent more at once than the gateway holds ({exc.limit} bytes, max_response_bytes)"
            if isinstance(exc, TooLarge)
            else "the model's backend dropped the connection mid-stream"
        )
        _failed(exchange, broken, "stream_protocol" if isinstance(exc, BadResponse) else "stream_reset")
        tail = relay.fail(broken)
    except _ClientGone:
        raise
    except asyncio.CancelledError:
        # The client left (the writes fail, and are ignored), or the gateway is shutting down
        # and the drain deadline passed: the client gets a well-formed end, then the cancel
        # goes on.
        with contextlib.suppress(Exception):
            await response.write_eof(
                (head or b"") + relay.fail(Overloaded("the gateway is shutting down; retry the request"))
            )
        raise
    except Exception:
        # A bug, not the upstream's fault; the 200 is committed, so the client still gets a
        # well-formed end rather than a stream cut inside a block.
        log.exception("unexpected error relaying stream (request %s)", exchange.request_id)
        exchange.error_type = "api_error"
        tail = relay.fail(GatewayError("internal error in the gateway"))
    finally:
        silence.stop()
    if relay.failure is not None:  # the relay's own: a broken chunk, an in-band error, an early end
        _failed(exchange, relay.failure, relay.failure.upstream_failure or "stream_error")
    return tail if head is None else head + tail


def _failed(exchange: Exchange, error: GatewayError, kind: str) -> None:
    """The stream failed by the upstream's doing: the client's error type, and the kind
    of failure the deployment's breaker is told (`dispatch.stream_ended`)."""
    exchange.error_type = error.error_type
    if exchange.stream_failure is None:
        exchange.stream_failure = error.upstream_failure or kind
