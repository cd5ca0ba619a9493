"""The per-deployment circuit breaker as a state machine, driven by a fake clock (no waiting)."""

from __future__ import annotations

import pytest

from gateway.breaker import Breaker, State
from tests.support.doubles import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


def breaker(clock: Clock, failures: int = 3, window: float = 30.0, seconds: float = 10.0) -> Breaker:
    return Breaker(failures=failures, window=window, seconds=seconds, clock=clock)


def open_it(b: Breaker, clock: Clock, failures: int = 3) -> None:
    for _ in range(failures):
        b.failure()
        clock.advance(1)
    assert b.state is State.OPEN


def test_starts_closed_and_usable(clock):
    b = breaker(clock)
    assert b.state is State.CLOSED and b.usable() and b.retry_in() == 0.0


def test_opens_after_n_failures_within_the_window(clock):
    b = breaker(clock)
    b.failure()
    clock.advance(10)
    b.failure()
    assert b.state is State.CLOSED and b.usable()
    clock.advance(10)
    b.failure()  # the third within 30 s
    assert b.state is State.OPEN
    assert not b.usable()
    assert b.retry_in() == pytest.approx(10.0)
    clock.advance(4)
    assert b.retry_in() == pytest.approx(6.0)


def test_failures_spread_beyond_the_window_do_not_open_it(clock):
    b = breaker(clock)
    for _ in range(10):
        b.failure()
        clock.advance(16)  # any three span 32 s > the 30 s window
    assert b.state is State.CLOSED and b.usable()


def test_a_success_forgets_earlier_failures(clock):
    b = breaker(clock)
    b.failure()
    b.failure()
    b.success()
    b.failure()
    b.failure()
    assert b.state is State.CLOSED
    b.failure()
    assert b.state is State.OPEN


def test_half_open_after_seconds_lets_exactly_one_probe_through(clock):
    b = breaker(clock)
    open_it(b, clock)
    clock.advance(9.5)  # opened 1 s ago (the last advance) + 9.5 = 10.5 ≥ 10
    assert b.state is State.HALF_OPEN and b.retry_in() == 0.0
    assert b.usable()
    b.claim()  # the probe
    assert b.state is State.HALF_OPEN
    assert not b.usable()  # nobody else while the probe is out
    assert not b.usable()


def test_still_open_just_before_seconds(clock):
    b = breaker(clock)
    open_it(b, clock)
    clock.advance(8.9)  # 9.9 s since it opened
    assert b.state is State.OPEN and not b.usable()
    b.claim()  # claiming an open breaker takes no probe
    clock.advance(0.2)
    assert b.state is State.HALF_OPEN and b.usable()


def test_probe_success_closes(clock):
    b = breaker(clock)
    open_it(b, clock)
    clock.advance(10)
    b.claim()
    b.success()
    assert b.state is State.CLOSED and b.usable() and b.opened_at is None
    # And it counts failures afresh: one failure does not reopen it.
    b.failure()
    assert b.state is State.CLOSED


def test_probe_failure_reopens_for_another_full_period(clock):
    b = breaker(clock)
    open_it(b, clock)
    clock.advance(10)
    b.claim()
    b.failure()
    assert b.state is State.OPEN and not b.usable()
    assert b.retry_in() == pytest.approx(10.0)
    clock.advance(10)
    assert b.state is State.HALF_OPEN and b.usable()  # a new probe is allowed


def test_release_probe_lets_another_probe_through(clock):
    b = breaker(clock)
    open_it(b, clock)
    clock.advance(10)
    b.claim()
    assert not b.usable()
    b.release_probe()  # the probe ended with the client's own error: says nothing
    assert b.state is State.HALF_OPEN and b.usable()


def test_claim_on_a_closed_breaker_takes_nothing(clock):
    b = breaker(clock)
    b.claim()
    b.claim()
    assert b.usable() and b.state is State.CLOSED


def test_failures_zero_disables_it(clock):
    b = breaker(clock, failures=0)
    for _ in range(100):
        b.failure()
    assert b.state is State.CLOSED and b.usable() and b.retry_in() == 0.0


def test_failures_one_opens_at_the_first_failure(clock):
    b = breaker(clock, failures=1)
    b.failure()
    assert b.state is State.OPEN


def test_pristine_only_with_nothing_to_remember(clock):
    b = breaker(clock)
    assert b.pristine
    b.failure()
    assert not b.pristine
    b.success()
    assert b.pristine
    open_it(b, clock)
    assert not b.pristine
    clock.advance(10)
    b.claim()
    b.success()
    assert b.pristine
