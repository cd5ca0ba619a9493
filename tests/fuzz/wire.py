"""One fuzz example on the wire: exactly the bytes it was given, and the answer read
against a deadline.

The client is the standard library's `http.client`, on a new connection per example: it
sends header values as raw bytes (control characters, obs-text) where aiohttp's client
refuses them, and a body of any bytes. The deadline is the hang detector: every read
waits at most what is left of it, so an answer or a stream that does not end in time
is reported as such (with what had arrived), never waited for without bound. The
gateway's stream pings arrive every second, so a per-read timeout alone would never
fire on a stream that pings forever; the total does.
"""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

# Long enough for a 30 MB body on a loaded machine, far longer than the gateway's own
# upstream timeouts (stack.py): past it, the gateway has left the client hanging.
DEADLINE = 20.0


@dataclass(frozen=True)
class Example:
    """A request as bytes, and what the fuzz says it is (for failure messages)."""

    path: str
    body: bytes
    headers: tuple[tuple[str, bytes], ...]
    summary: str
    streams: bool  # a 200 to it is an event stream

    def __repr__(self) -> str:  # what hypothesis shows of a failing example; `describe` has the bytes
        return f"<{self.summary[:300]}>"

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # (hypothesis's printer would list every field)
        printer.text(repr(self))

    def describe(self) -> str:
        shown = ", ".join(f"{name}: {value[:120]!r}" for name, value in self.headers)
        head = self.body[:600]
        more = f" … ({len(self.body)} bytes)" if len(self.body) > len(head) else ""
        return f"{self.summary}\nPOST {self.path}\nheaders: {shown}\nbody: {head!r}{more}"


@dataclass
class Answer:
    started: float
    ended: float
    status: int = 0  # 0: no answer at all
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    timed_out: bool = False
    failure: str | None = None  # why there is no (complete) answer

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def request_id(self) -> str | None:
        return self.headers.get("request-id")

    def json(self) -> object:
        return orjson.loads(self.body)


def send(url: str, example: Example, deadline: float = DEADLINE) -> Answer:
    address = urlsplit(url)
    started = time.monotonic()
    ends_at = started + deadline
    answer = Answer(started=started, ended=started)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=deadline)
    try:
        _exchange(connection, example, answer, ends_at)
    except TimeoutError:
        answer.timed_out = True
        answer.failure = f"no complete answer within {deadline:g} s"
    except (OSError, http.client.HTTPException) as exc:
        answer.failure = f"{type(exc).__name__}: {exc}"
    finally:
        answer.ended = time.monotonic()
        connection.close()
    return answer


def _exchange(connection: http.client.HTTPConnection, example: Example, answer: Answer, ends_at: float) -> None:
    connection.putrequest("POST", example.path, skip_accept_encoding=True)
    for name, value in example.headers:
        connection.putheader(name, value)
    connection.putheader("content-length", str(len(example.body)))
    try:
        connection.endheaders(example.body)
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused before the body was all sent (a 413): the answer may be waiting
    # (held here: the connection lets go of its socket when the answer says it closes)
    sock = connection.sock
    assert sock is not None
    response = connection.getresponse()
    answer.status = response.status
    answer.headers = {name.lower(): value for name, value in response.getheaders()}
    pieces: list[bytes] = []
    while True:
        remaining = ends_at - time.monotonic()
        if remaining <= 0:
            answer.body = b"".join(pieces)
            raise TimeoutError
        sock.settimeout(remaining)
        try:
            piece = response.read1(1 << 20)
        except TimeoutError:
            answer.body = b"".join(pieces)
            raise
        if not piece:
            break
        pieces.append(piece)
    answer.body = b"".join(pieces)


def sse_events(raw: bytes) -> list[dict]:
    """A Messages event stream's events, each checked to carry an `event:` line naming
    its own `type` (the SDKs dispatch on that line and drop events without one)."""
    events = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not block.strip():
            continue
        fields: dict[bytes, list[bytes]] = {}
        for line in block.split(b"\n"):
            if line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            fields.setdefault(name, []).append(value[1:] if value.startswith(b" ") else value)
        assert b"data" in fields, f"an event without data: {block[:200]!r}"
        event = orjson.loads(b"\n".join(fields[b"data"]))
        names = fields.get(b"event", [b""])
        kind = event.get("type")
        assert names[0].decode() == kind, f"event line {names[0]!r} for an event of type {kind!r}"
        events.append(event)
    return events
