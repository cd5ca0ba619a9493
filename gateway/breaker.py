"""A circuit breaker per deployment, per process: cooldown for a deployment that keeps failing.

    closed ──(`failures` retryable failures within `window` s)──▶ open
    open ──(after `seconds`)──▶ half_open: one probe request may go through
    half_open ──probe succeeds──▶ closed        half_open ──probe fails──▶ open

Only failures a retry could fix count (connect errors, timeouts, 429, 5xx, and a stream
that broke after it started): a client's bad request says nothing about the deployment's
health. An open breaker remembers why it opened (`cause`), so a refusal can say whether
the backend was rate limiting or failing. The clock is passed in, so the breaker is
tested without waiting.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import StrEnum


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Why a breaker opened: its backend answered 429 (rate limited), or anything else.
RATE_LIMITED = "rate_limited"
FAILING = "failing"


class Breaker:
    __slots__ = ("_clock", "_failures", "_probing", "_recent", "_seconds", "_window", "cause", "opened_at")

    def __init__(self, *, failures: int, window: float, seconds: float, clock: Callable[[], float]) -> None:
        self._failures = failures
        self._window = window
        self._seconds = seconds
        self._clock = clock
        self._recent: deque[float] = deque()
        self._probing = False
        self.opened_at: float | None = None
        self.cause = FAILING

    @property
    def state(self) -> State:
        if self.opened_at is None:
            return State.CLOSED
        if self._clock() - self.opened_at < self._seconds:
            return State.OPEN
        return State.HALF_OPEN

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        if self.opened_at is None:
            return 0.0
        return max(self.opened_at + self._seconds - self._clock(), 0.0)

    @property
    def pristine(self) -> bool:
        """Closed with no failure to remember: forgetting it loses nothing."""
        return self.opened_at is None and not self._recent and not self._probing

    def usable(self) -> bool:
        """May a request go to this deployment now? (Only looks; `claim` takes the probe.)"""
        if self.opened_at is None:  # the common case, on every request: no clock read
            return True
        state = self.state
        return state is State.CLOSED or (state is State.HALF_OPEN and not self._probing)

    def claim(self) -> None:
        """A request is going to this deployment: if half-open, it is the one probe."""
        if self.opened_at is not None and self.state is State.HALF_OPEN:
            self._probing = True

    def success(self) -> None:
        self.opened_at = None
        self._probing = False
        self._recent.clear()

    def failure(self, kind: str = "") -> None:
        """A failure a retry could fix; `kind` as `dispatch.failure_kind` names it."""
        if self._failures == 0:
            return
        now = self._clock()
        cause = RATE_LIMITED if kind == "status_429" else FAILING
        if self.opened_at is not None:  # the half-open probe failed, or a straggler did
            self.opened_at = now
            self.cause = cause
            self._probing = False
            return
        self._recent.append(now)
        while self._recent and now - self._recent[0] > self._window:
            self._recent.popleft()
        if len(self._recent) >= self._failures:
            self.opened_at = now
            self.cause = cause
            self._recent.clear()

    def release_probe(self) -> None:
        """The probe ended without saying anything about health (the client's own error)."""
        self._probing = False
