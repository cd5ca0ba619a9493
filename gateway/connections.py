"""The listeners' connections: deadlines for a request's head and body, and a cap on how
many are open.

aiohttp's server bounds neither how long a request's headers nor its body may take to
arrive: its keep-alive timer closes a connection idle *between* requests. A client that
sends a byte a second holds a connection, and one of the worker's file descriptors, for
as long as it likes, and a few thousand such clients take the worker. So:

- `ClientConnection` is aiohttp's own `RequestHandler` with two deadlines added. Neither
  runs while the gateway answers: a stream lasts as long as its upstream's timeouts allow.
  - The head (`Listener.header_timeout`): from the connection's accept, or from the first
    byte of a later request on a kept-alive connection, to the end of its headers. Past
    it the client gets 408 and the connection closes; one that never sent a byte is
    closed without an answer (there is no request to answer).
  - The body (`Listener.body_timeout`): from the end of the headers to the body's last
    byte. Past it the handler's read of the body raises `RequestTimedOut`, which the
    edge answers (408) as any other error, and the connection closes after the answer.
- `GuardedSite` serves a listening socket with these connections, and answers one past
  `Listener.max_connections` open on it (in this worker) with `503 overloaded_error`
  at once.

aiohttp has no hook for "a request's head was parsed", so `ClientConnection` reads four
attributes of its `RequestHandler`: `_request_count` and `_messages` (a head was parsed,
and its body), `_current_request` (a handler is running), `_loop`; and it sets a fifth,
`_lingering_time`. All five exist from aiohttp 3.10 on; tests/integration/test_connections.py
fails if that changes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

from aiohttp import web
from aiohttp.streams import StreamReader

from gateway.errors import InvalidRequest, RequestTimedOut, TooManyConnections
from gateway.exchange import Exchange
from gateway.middleware import error_response, raw_error_response

log = logging.getLogger("gateway")

HEAD = "headers"
BODY = "body"

# Seconds a connection is still read (and what arrives dropped) after its last answer,
# before it is closed: closing a socket with unread bytes sends a TCP reset instead of a
# FIN, and a reset can cost the client the answer it has not read yet. A client that
# closes its side first ends this at once.
LINGER = 2.0


class ConnectionEvents(Protocol):
    """What connections report (`metrics.ConnectionObserver`), by listener name."""

    def opened(self, listener: str) -> None: ...

    def closed(self, listener: str) -> None: ...

    def refused(self, listener: str) -> None: ...

    def timed_out(self, listener: str, phase: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Listener:
    """The rules of one listening socket."""

    name: str  # "client" or "admin": its metrics' label
    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    max_connections: int
    # The paths this listener answers (the edge answers the rest 404); None: every path.
    serves: Callable[[str], bool] | None = None


class _Gate:
    """The connections one listener has open in this worker, against its cap."""

    __slots__ = ("listener", "events", "open")

    def __init__(self, listener: Listener, events: ConnectionEvents) -> None:
        self.listener = listener
        self.events = events
        self.open = 0

    def admit(self) -> bool:
        if self.open >= self.listener.max_connections:
            self.events.refused(self.listener.name)
            return False
        self.open += 1
        self.events.opened(self.listener.name)
        return True

    def release(self) -> None:
        self.open -= 1
        self.events.closed(self.listener.name)

    def timed_out(self, phase: str) -> None:
        self.events.timed_out(self.listener.name, phase)


class _Draining(asyncio.Protocol):
    """A connection after its last answer: half-closed (the client reads the answer,
    then end of file), what it still sends read and dropped, closed when the client
    closes or after `LINGER` seconds."""

    def __init__(self, transport: asyncio.Transport) -> None:
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()


def _refuse(transport: asyncio.Transport, listener: Listener) -> None:
    error = TooManyConnections(
        f"this gateway process has {listener.max_connections} connections open (server.max_connections); retry shortly",
        headers={"retry-after": "1"},
    )
    transport.write(raw_error_response(error))
    transport.set_protocol(_Draining(transport))


class ClientConnection(web.RequestHandler):
    """One connection of a `GuardedSite`: aiohttp's request handler, with the head and
    body deadlines. `_phase` is HEAD while a request's headers are arriving, BODY while
    its body is, None otherwise (idle between requests, or answering)."""

    __slots__ = ("listener", "_gate", "_phase", "_deadline", "_body", "_heard")

    def __init__(self, manager: web.Server, gate: _Gate, **kwargs: Any) -> None:
        super().__init__(manager, keepalive_timeout=gate.listener.keepalive_timeout, **kwargs)
        self.listener = gate.listener  # the edge asks it which paths it serves
        self._gate = gate
        self._phase: str | None = HEAD
        self._deadline: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None
        self._heard = False  # a byte of the current head has arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._gate.admit():
            _refuse(transport, self.listener)  # type: ignore[arg-type]
            return
        super().connection_made(transport)
        self._arm(self.listener.header_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._gate.release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        started = None
        if data:
            if self._phase is None:  # the first byte of the next request
                self._phase = HEAD
                started = self._loop.time()
            self._heard = True
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            self._head_received()
        elif started is not None and self._phase is HEAD:
            # Armed only now: most heads arrive whole, in the read that starts them.
            self._arm(self.listener.header_timeout, since=started)

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """aiohttp's answer to what it could not parse as a request (a header over 8190
        bytes, more than 128 of them, a bad request line): a Messages error body instead
        of its plain text, and a debug line instead of a logged traceback (anybody on the
        network can send these). Its 500s stay aiohttp's."""
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:  # as aiohttp's: too late for an answer
            raise ConnectionError("an answer was already under way")
        reason = _reason(exc, message) or HTTPStatus(status).phrase
        log.debug("malformed request from %s: %s", request.remote, reason)
        response = error_response(InvalidRequest(f"malformed HTTP request: {reason}"), Exchange())
        response.set_status(status)
        response.force_close()
        return response

    def _head_received(self) -> None:
        """A request's headers are complete (the last request's, if several came at once)."""
        self._disarm()
        self._heard = False
        body = self._messages[-1][1] if self._messages else None
        if body is None or body.is_eof():
            self._phase = None
            return
        self._phase, self._body = BODY, body
        body.on_eof(functools.partial(self._body_received, body))
        self._arm(self.listener.body_timeout)

    def _body_received(self, body: StreamReader) -> None:
        if body is self._body:
            self._disarm()
            self._phase, self._body = None, None

    def _arm(self, seconds: float, since: float | None = None) -> None:
        self._disarm()
        when = (self._loop.time() if since is None else since) + seconds
        self._deadline = self._loop.call_at(when, self._late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late(self) -> None:
        self._deadline = None
        if self._phase is HEAD:
            self._head_late()
        elif self._phase is BODY and self._body is not None:
            self._body_late(self._body)

    def _head_late(self) -> None:
        if self._current_request is not None:
            # Pipelined behind a request being answered: aiohttp's keep-alive timer,
            # armed once that answer is out, closes the connection if this head is
            # still incomplete by then.
            return
        self._gate.timed_out(HEAD)
        transport = self.transport
        if not self._heard or transport is None:
            self.force_close()
            return
        seconds = self.listener.header_timeout
        error = RequestTimedOut(f"the request's headers did not arrive within {seconds:g}s (server.header_timeout)")
        transport.write(raw_error_response(error))
        if transport.can_write_eof():
            transport.write_eof()
        self.close()  # aiohttp reads no further request, and drops what still arrives
        self._deadline = self._loop.call_later(LINGER, self.force_close)

    def _body_late(self, body: StreamReader) -> None:
        self._gate.timed_out(BODY)
        if self._current_request is None:
            # Answered already, without reading the whole body: aiohttp is discarding
            # the rest; no more of it is waited for.
            self.force_close()
            return
        seconds = self.listener.body_timeout
        error = RequestTimedOut(
            f"the request's body did not arrive within {seconds:g}s of its headers (server.body_timeout)",
            headers={"connection": "close"},
        )
        body.set_exception(error)  # the handler's read raises it; the edge answers 408
        self._lingering_time = 0.0  # after the answer, nothing more of the body is read
        self.close()


class GuardedSite(web.SockSite):
    """A listening socket served by `ClientConnection`s, at most `listener.max_connections`
    of them open at once."""

    __slots__ = ("_gate",)

    def __init__(self, runner: web.BaseRunner, sock: Any, listener: Listener, events: ConnectionEvents) -> None:
        super().__init__(runner, sock)
        self._gate = _Gate(listener, events)

    async def start(self) -> None:
        await super(web.SockSite, self).start()  # BaseSite's: registers with the runner
        server = self._runner.server
        assert server is not None
        gate = self._gate
        loop = asyncio.get_running_loop()

        def connection() -> ClientConnection:
            return ClientConnection(server, gate, loop=loop, access_log=None)

        self._server = await loop.create_server(connection, sock=self._sock, backlog=self._backlog)


# aiohttp's parser errors quote the offending bytes (a whole header line, a key with a
# stray byte in it): what precedes the quote says what was wrong, the quote is the client's.
_QUOTED = re.compile(r":?\s*(?:\n|b['\"]).*", re.S)


def _reason(exc: BaseException | None, message: str | None) -> str:
    """What was malformed, without the client's bytes: never echoed, never logged."""
    text = message or getattr(exc, "message", None) or (str(exc) if exc else "")
    return _QUOTED.sub("", str(text)).strip()[:200]
