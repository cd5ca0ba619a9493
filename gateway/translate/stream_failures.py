"""How a relay names what broke a stream, for the client's `error` event and the breaker.

Both relays (`messages_chat/relay.py`, `messages_native/relay.py`) end a failed stream
with one of these; `upstream_failure` tells the pump what kind of stream failure it was.
"""

from __future__ import annotations

from gateway.errors import MESSAGES_ERROR_TYPES, GatewayError, Overloaded, UpstreamProtocolError
from gateway.translate.upstream_errors import upstream_message

ENDED_EARLY = "the model's backend ended the stream early"


def tagged(error: GatewayError) -> GatewayError:
    """`error` with the kind of stream failure it is (`Exchange.stream_failure`)."""
    if error.upstream_failure is None:
        error.upstream_failure = "stream_protocol" if isinstance(error, UpstreamProtocolError) else "stream_error"
    return error


def ended_early() -> GatewayError:
    error = GatewayError(ENDED_EARLY)
    error.upstream_failure = "stream_reset"
    return error


def upstream_error(payload: object, data: str) -> GatewayError:
    """An upstream `error` event as the gateway error it stands for: its Messages type kept
    when it is one (overloaded stays overloaded), its message scrubbed of secrets."""
    error = payload.get("error") if isinstance(payload, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    text = upstream_message(data.encode()) or "the model's backend failed mid-stream"
    failure = Overloaded(text) if kind == "overloaded_error" else GatewayError(text)
    if isinstance(kind, str) and kind in MESSAGES_ERROR_TYPES:
        failure.error_type = kind
    failure.upstream_failure = "stream_error"
    return failure
