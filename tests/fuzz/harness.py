"""Sending one example and holding the gateway to what it must do with any input.

For every example:

- it answers, within the deadline (wire.py): no hung request, no hung stream;
- never a 5xx, and every error is a Messages error body
  (`{"type":"error","error":{"type":...,"message":...}}`, as JSON);
- a 200 is a Messages answer: a message, a count, or a stream that keeps the Messages
  grammar (tests/support/grammar.py) and ends with `message_stop` or an `error` event;
- nothing the gateway logged meanwhile holds the client's key or an upstream key;
- the worker kept answering `/healthz` within `health.BOUND` while it served the example
  (see `Fuzzer.check_health` for how that is judged on a loaded machine).

A failure names the example (`Example.describe`), the answer, and the gateway's log
lines for the request.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import orjson

from gateway.errors import MESSAGES_ERROR_TYPES
from tests.fuzz.health import BOUND, Probe, ProbeLog
from tests.fuzz.stack import MODELS, SECRETS, Stack
from tests.fuzz.targets import COUNT_TOKENS, JSON_HEADERS, auth
from tests.fuzz.wire import DEADLINE, Answer, Example, send, sse_events
from tests.support.grammar import check_stream

# How long the prober may take to report a probe after an example (it probes every
# 10 ms; this is for a machine that stopped it for a while).
PROBE_WAIT = 20.0
# A key counts as logged when any run of this many of its characters is: a key with a
# stray byte in the middle (the fuzz sends those) is logged, if at all, in two pieces.
# The key's shown prefix (9 characters) is shorter.
LEAK_RUN = 16
# What `finish` sends last.
MARKER_BODY = orjson.dumps({"model": MODELS["native"], "messages": [{"role": "user", "content": "the end"}]})


# One class per kind of failure: hypothesis tells failures apart by their type (and
# where they were raised), so each kind found is reported, not only the first.
class Hang(AssertionError):
    """No complete answer, or a stream not ended, within the deadline."""


class NoAnswer(AssertionError):
    """The connection ended without an answer."""


class KeyLogged(AssertionError):
    """A key appeared in the gateway's log."""


class ServerError(AssertionError):
    """A 5xx."""


class NotJSON(AssertionError):
    """An error, a message or a count that is not JSON (a plain-text refusal, say)."""


class NotAnError(AssertionError):
    """A JSON error body that is not a Messages error."""


class NotAnAnswer(AssertionError):
    """A 200 that is not a Messages message, count or stream."""


class BrokenStream(AssertionError):
    """A stream that breaks the Messages event grammar."""


class Stalled(AssertionError):
    """The worker did not answer /healthz within the bound while serving the request."""


@dataclass
class Ledger:
    """What the fuzz saw, for the summary at the end of the run."""

    examples: int = 0
    statuses: Counter = field(default_factory=Counter)
    # Slow /healthz probes during an example that did not recur when it was sent again.
    unrepeated_stalls: list[str] = field(default_factory=list)
    worst_probe: Probe = field(default_factory=lambda: Probe(0.0, 0.0, 200, None))
    worst_during: str = ""  # the example the slowest probe overlapped


class Fuzzer:
    def __init__(self, stack: Stack, ledger: Ledger, deadline: float = DEADLINE) -> None:
        """`deadline`: seconds an answer may take before it counts as a hang."""
        self.stack = stack
        self.ledger = ledger
        self.deadline = deadline
        self.probes = ProbeLog(stack.probes)
        self._log_offset = 0

    # ------------------------------------------------------------------ one example

    def run(self, example: Example) -> Answer:
        """Send `example` and check everything."""
        answer = self._send_checked(example)
        self.check_health(example, answer)
        return answer

    def _send_checked(self, example: Example) -> Answer:
        self._assert_running()
        answer = send(self.stack.gateway_url, example, self.deadline)
        log = self._new_log()
        self.ledger.examples += 1
        self.ledger.statuses[answer.status] += 1
        context = _Context(example, answer, log)
        context.expect(not answer.timed_out, Hang, f"hang: {answer.failure}")
        context.expect(answer.failure is None and answer.status, NoAnswer, f"no answer: {answer.failure}")
        leaked = leaked_secrets(log)
        context.expect(not leaked, KeyLogged, f"the gateway logged a key ({', '.join(k[:12] + '…' for k in leaked)})")
        context.expect(answer.status < 500, ServerError, f"a server error: {answer.status}")
        if answer.status >= 400:
            _check_error_body(context)
        else:
            context.expect(answer.status == 200, NotAnAnswer, f"status {answer.status}")
            if example.path == COUNT_TOKENS:
                _check_count(context)
            elif example.streams:
                _check_stream(context)
            else:
                _check_message(context)
        return answer

    def check_health(self, example: Example, answer: Answer) -> None:
        """Was `/healthz` answered within the bound while the gateway served `answer`?

        The bound is the issue's 100 ms, and the check is made so that it means the
        gateway's own event-loop lag, on a shared two-core machine where wall-clock
        time alone would mostly measure the neighbours:

        - A probe runs every 10 ms from a process of its own (tests/fuzz/prober.py),
          so this process generating examples and building big bodies is not in what
          it measures, and any stall longer than the bound has a probe in flight
          across it.
        - Only probes in flight while this example was being served count: a slow
          probe at another moment has nothing to do with this request.
        - A slow probe is one that took longer than the bound *while the gateway
          process spent at least the bound in CPU* (health.py): the loop was busy.
          A probe that waited because the machine did not run the gateway (other
          test suites, the prober itself descheduled) is not the gateway's lag.
        - Retried once: the same example is sent again, and it fails only if a probe
          is slow during the second run too. A request that blocks the loop (a
          quadratic merge, a per-character loop over megabytes) does so every time;
          a one-off (a garbage collection landing there) does not, and is listed in
          the summary instead.

        The slowest probe of the run is in the summary, with the CPU the gateway spent
        during it."""
        slow = self._slow_probes(example, answer)
        if not slow:
            return
        again = self._send_checked(example)
        slow_again = self._slow_probes(example, again)
        first = max(slow, key=lambda p: p.seconds)
        if not slow_again:
            self.ledger.unrepeated_stalls.append(f"{first.describe()} during {example.summary[:120]}")
            return
        second = max(slow_again, key=lambda p: p.seconds)
        raise Stalled(
            f"the worker did not answer /healthz within {BOUND * 1000:.0f} ms while serving this request, twice: "
            f"{first.describe()}, then {second.describe()} (the request took {answer.ended - answer.started:.3f} s "
            f"and {again.ended - again.started:.3f} s)\n{example.describe()}"
        )

    def _slow_probes(self, example: Example, answer: Answer) -> list[Probe]:
        if not self.probes.wait_past(answer.ended, PROBE_WAIT):  # as one probe that never got an answer
            return [Probe(answer.ended, time.monotonic(), 0, None)]
        probes = self.probes.during(answer.started, answer.ended)
        for probe in probes:
            if probe.seconds > self.ledger.worst_probe.seconds:
                self.ledger.worst_probe, self.ledger.worst_during = probe, example.summary[:160]
        return [probe for probe in probes if probe.slow]

    # ------------------------------------------------------------------ the log

    def finish(self, timeout: float = 10.0) -> None:
        """After the last example: the access log is written in batches (every 0.1 s),
        so its last lines may come after the last answer. One more request, a plain
        count, goes after them; its line is written after theirs, so once it is in the
        log everything the examples made the gateway log is too. Then: no key in it."""
        marker = Example(COUNT_TOKENS, MARKER_BODY, (auth(), *JSON_HEADERS), "the last request of a test", False)
        answer = send(self.stack.gateway_url, marker, self.deadline)
        assert answer.status == 200 and answer.request_id, f"the closing count was not answered: {answer}"
        wanted = b'"request_id":"' + answer.request_id.encode() + b'"'
        deadline = time.monotonic() + timeout
        late = self._new_log()
        found = wanted in late
        while not found:
            assert time.monotonic() < deadline, f"no access-log line for {answer.request_id} within {timeout:g} s"
            time.sleep(0.02)
            fresh = self._new_log()
            found = wanted in late[-len(wanted) :] + fresh  # (its line may have been half written at the last look)
            late += fresh
        leaked = leaked_secrets(late)
        lines = [line[:400] for line in late.splitlines() if leaked_secrets(line)]
        shown = ", ".join(secret[:12] + "…" for secret in leaked)
        assert not leaked, f"the gateway logged a key ({shown}):\n" + "\n".join(map(repr, lines[:20]))

    def _new_log(self) -> bytes:
        """What the gateway logged since the last look."""
        with self.stack.gateway.log.open("rb") as file:
            file.seek(self._log_offset)
            data = file.read()
        self._log_offset += len(data)
        return data

    def _assert_running(self) -> None:
        for process in self.stack.processes():
            code = process.process.poll()
            assert code is None, f"the {process.name} exited ({code}):\n{process.text()[-3000:]}"


def _pieces(secret: str) -> list[bytes]:
    """Runs of `LEAK_RUN` characters, every 3 characters along: a logged run of 18 or
    more of the secret's characters holds one of them."""
    raw = secret.encode()
    return [raw[i : i + LEAK_RUN] for i in range(0, len(raw) - LEAK_RUN + 1, 3)]


SECRET_PIECES = {secret: _pieces(secret) for secret in SECRETS}


def leaked_secrets(log: bytes) -> list[str]:
    return [secret for secret, pieces in SECRET_PIECES.items() if any(piece in log for piece in pieces)]


@dataclass
class _Context:
    example: Example
    answer: Answer
    log: bytes

    def expect(self, condition: object, failure: type[AssertionError], problem: str) -> None:
        if not condition:
            raise failure(self.report(problem))

    def report(self, problem: str) -> str:
        answer = self.answer
        body = answer.body[:1500]
        more = f" … ({len(answer.body)} bytes)" if len(answer.body) > len(body) else ""
        lines = [
            problem,
            self.example.describe(),
            f"answer: {answer.status} {answer.content_type} after {answer.ended - answer.started:.3f} s: "
            f"{body!r}{more}",
        ]
        logged = self._logged()
        if logged:
            lines.append("gateway log meanwhile:\n" + logged)
        return "\n".join(lines)

    def _logged(self) -> str:
        """The log lines for this request (its request id, or every line if it has none),
        without the access log's, each cut to a readable length."""
        request_id = (self.answer.request_id or "").encode()
        shown = []
        for line in self.log.splitlines():
            if line.startswith(b'{"request_id"') and (not request_id or request_id not in line):
                continue
            shown.append(line[:400].decode(errors="replace"))
        return "\n".join(shown[-60:])


def _json(context: _Context) -> object:
    context.expect(context.answer.content_type == "application/json", NotJSON, "not a JSON answer")
    try:
        return context.answer.json()
    except orjson.JSONDecodeError as exc:
        raise NotJSON(context.report(f"the answer is not JSON: {exc}")) from None


def _check_error_body(context: _Context) -> None:
    body = _json(context)
    ok = (
        isinstance(body, dict)
        and body.get("type") == "error"
        and isinstance(body.get("error"), dict)
        and body["error"].get("type") in MESSAGES_ERROR_TYPES
        and isinstance(body["error"].get("message"), str)
    )
    context.expect(ok, NotAnError, "an error that is not a Messages error body")


def _check_count(context: _Context) -> None:
    body = _json(context)
    count = body.get("input_tokens") if isinstance(body, dict) else None
    counted = isinstance(count, int) and not isinstance(count, bool) and count >= 0
    context.expect(counted, NotAnAnswer, "not a token count")


def _check_message(context: _Context) -> None:
    body = _json(context)
    ok = (
        isinstance(body, dict)
        and body.get("type") == "message"
        and body.get("role") == "assistant"
        and isinstance(body.get("content"), list)
        and isinstance(body.get("usage"), dict)
    )
    context.expect(ok, NotAnAnswer, "a 200 that is not a Messages message")


def _check_stream(context: _Context) -> None:
    streamed = context.answer.content_type == "text/event-stream"
    context.expect(streamed, NotAnAnswer, "a 200 to a stream request that is not a stream")
    try:
        check_stream(sse_events(context.answer.body))
    except (AssertionError, orjson.JSONDecodeError) as exc:
        raise BrokenStream(context.report(f"the stream breaks the Messages grammar: {exc}")) from None
