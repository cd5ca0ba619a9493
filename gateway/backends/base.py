"""What every backend provides, and the HTTP plumbing they share.

A backend turns a validated Messages request into an upstream call and the upstream's
answer back into a Messages answer. Translation lives in `translate/` (pure); a backend
only adds URLs, credentials, timeouts and error mapping.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from yarl import URL

from gateway.backends.http_client import (
    MAX_BODY,
    CannotConnect,
    CutShort,
    Response,
    TooLarge,
    UpstreamClient,
    UpstreamError,
)
from gateway.config import RouteConfig, Timeouts
from gateway.errors import GatewayError, Overloaded, UpstreamProtocolError, UpstreamTimeout, UpstreamTooLarge
from gateway.exchange import Exchange
from gateway.protocols.messages import MessagesRequest
from gateway.translate.upstream_errors import error_from_upstream

# Client headers a native backend may see; everything else (credentials above all) stays here.
FORWARDED_ANTHROPIC_HEADERS = ("anthropic-version", "anthropic-beta")


@dataclass(frozen=True, slots=True)
class Deployment:
    """One place a model is served: a backend and the model name it knows."""

    backend: Backend
    upstream_model: str
    route: RouteConfig
    # For backends that need a `max_tokens` when the client sent none.
    default_max_tokens: int

    @property
    def backend_name(self) -> str:
        return self.backend.name


class Relay(Protocol):
    """What turns one stream's upstream bytes into Messages SSE, as the pump drives it: a
    translator's relay (`translate/messages_chat/relay.py`, `translate/messages_native/relay.py`).
    Pure: it never touches a socket or a clock, so the pump owns both."""

    @property
    def finished(self) -> bool:
        """The stream's last event is out (its end, or an `error` event): nothing more to read."""

    @property
    def has_content(self) -> bool:
        """A delta reached the client (time to first token counts from the first)."""

    @property
    def done(self) -> bool:
        """The upstream said it is done (`[DONE]`), though usage may still follow."""

    @property
    def failure(self) -> GatewayError | None:
        """Set when the upstream's bytes ended the stream with an error."""

    @property
    def usage(self) -> Mapping[str, Any]:
        """What the stream used so far, in Messages' `usage` shape (what settles the request)."""

    @property
    def usage_reported(self) -> bool: ...

    def start(self) -> bytes: ...
    def feed(self, data: bytes) -> bytes: ...
    def end(self) -> bytes: ...
    def fail(self, error: GatewayError) -> bytes: ...


@dataclass(frozen=True, slots=True)
class StreamHandle:
    """An opened upstream stream, with all the pump (`streaming.respond`) needs of the
    backend that opened it, so it never reaches into a backend's configuration."""

    # Status 200, body unread; the pump reads it and closes it.
    response: Response
    relay: Relay
    # Seconds the upstream may stay silent mid-stream (`timeouts.idle`).
    idle_timeout: float
    # The backend's name in the configuration, for the client's `x-gateway-backend`.
    backend: str


class Backend(Protocol):
    name: str

    async def send(
        self, request: MessagesRequest, deployment: Deployment, headers: dict[str, str], exchange: Exchange
    ) -> Mapping[str, Any]:
        """Answer a non-streaming request with a Messages response body."""

    async def open_stream(
        self, request: MessagesRequest, deployment: Deployment, headers: dict[str, str], exchange: Exchange
    ) -> StreamHandle:
        """Start a streaming request: the upstream response (status 200, body unread) and the
        relay that turns its bytes into Messages SSE. A refusal raises before anything
        reaches the client."""

    async def count_tokens(
        self, request: MessagesRequest, deployment: Deployment, headers: dict[str, str], exchange: Exchange
    ) -> dict:
        """Answer `/v1/messages/count_tokens` with `{"input_tokens": N}`."""


async def post_json(
    client: UpstreamClient,
    url: URL,
    body: Any,
    headers: dict[str, str],
    timeouts: Timeouts,
    backend: str,
    *,
    max_body: int = MAX_BODY,
) -> Any:
    """POST a JSON body and return the parsed JSON answer (at most `max_body` bytes of it);
    any failure as a `GatewayError`."""
    try:
        response = await client.post(
            url,
            orjson.dumps(body),
            headers,
            connect=timeouts.connect,
            first_byte=timeouts.first_byte,
            total=timeouts.total,
            keepalive=timeouts.keepalive,
            max_body=max_body,
        )
        try:
            raw = await response.read()
        finally:
            response.close()
    except (UpstreamError, TimeoutError) as exc:
        raise transport_error(exc, backend) from None
    if response.status != 200:
        raise error_from_upstream(response.status, raw, response.headers)
    return parse_json(raw, backend)


async def open_upstream_stream(
    client: UpstreamClient,
    url: URL,
    body: bytes,
    headers: dict[str, str],
    timeouts: Timeouts,
    backend: str,
    exchange: Exchange,
    *,
    max_body: int = MAX_BODY,
) -> Response:
    """POST and wait for the response headers (bounded by `first_byte`); the caller owns the
    response. The wait counts as upstream time, so the gateway's own overhead leaves it out."""
    started = time.perf_counter()
    try:
        return await client.post(
            url,
            body,
            headers,
            connect=timeouts.connect,
            first_byte=timeouts.first_byte,
            total=timeouts.total,
            stream=True,
            keepalive=timeouts.keepalive,
            max_body=max_body,
        )
    except (UpstreamError, TimeoutError) as exc:
        raise transport_error(exc, backend) from None
    finally:
        exchange.upstream_seconds += time.perf_counter() - started


async def read_error(response: Response) -> bytes:
    """The body of a refused request; the response is closed either way. One past the
    call's `max_body` is the upstream's failure, not a refusal to pass on."""
    try:
        return await response.read()
    except TooLarge as exc:
        raise too_large(exc) from None
    except (UpstreamError, TimeoutError):
        return b""
    finally:
        response.close()


def transport_error(exc: BaseException, backend: str) -> GatewayError:
    """A failure to talk to the upstream at all, as the client should see it."""
    error: GatewayError
    if isinstance(exc, TimeoutError):
        error = UpstreamTimeout(f"backend '{backend}' did not answer in time")
        error.upstream_failure = "timeout"
        return error
    if isinstance(exc, TooLarge):
        return too_large(exc)
    if isinstance(exc, CannotConnect):
        error = Overloaded(f"backend '{backend}' is unreachable")
    elif isinstance(exc, CutShort):
        error = GatewayError(f"backend '{backend}' closed the connection mid-answer")
    else:
        error = Overloaded(f"backend '{backend}' failed: {type(exc).__name__}")
    error.upstream_failure = "connect"
    return error


def too_large(exc: TooLarge) -> GatewayError:
    """An answer past its cap: the upstream's failure (its breaker and metrics count it as
    `protocol`), never one the client could fix."""
    error = UpstreamTooLarge(
        f"the model's backend sent an answer larger than the gateway reads ({exc.limit} bytes, max_response_bytes)"
    )
    error.upstream_failure = "protocol"
    return error


def parse_json(body: bytes, backend: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad_answer(f"backend '{backend}' answered with a body that is not JSON") from None


def bad_answer(message: str | UpstreamProtocolError) -> UpstreamProtocolError:
    """A whole answer that is not the protocol's: the upstream's failure, which its breaker
    counts and routing may retry elsewhere (`protocol`), as for an answer past its cap."""
    error = message if isinstance(message, UpstreamProtocolError) else UpstreamProtocolError(message)
    error.upstream_failure = "protocol"
    return error


def with_max_tokens(request: MessagesRequest, deployment: Deployment, default: int | None) -> MessagesRequest:
    """The request with `max_tokens` clamped to the route's cap (and filled in where a
    backend needs one); a shallow copy, the client's request is never changed."""
    cap = deployment.route.max_output_tokens
    wanted = request.get("max_tokens")
    value = wanted if wanted is not None else default
    if value is not None and cap is not None and value > cap:
        value = cap
    if value == wanted:
        return request
    return {**request, "max_tokens": value}
