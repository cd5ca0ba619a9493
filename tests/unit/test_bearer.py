"""The throttle on guessing operator tokens (`bearer.FailureThrottle`), on a clock the test
moves: `limit` failures within `window` seconds hold an address until the oldest of them
is `window` old; a success forgives; at most `capacity` addresses are remembered."""

from __future__ import annotations

from gateway.bearer import FailureThrottle
from tests.support.doubles import Clock


def throttle(clock: Clock, **kwargs) -> FailureThrottle:
    return FailureThrottle(**{"limit": 3, "window": 60.0, "capacity": 100, "clock": clock, **kwargs})


def test_an_address_is_held_after_its_limit_of_failures_until_the_oldest_is_a_window_old():
    clock = Clock()
    guard = throttle(clock)
    for _ in range(2):
        guard.failed("10.0.0.1")
        clock.now += 10
    assert guard.retry_after("10.0.0.1") is None  # two of three
    guard.failed("10.0.0.1")
    assert guard.retry_after("10.0.0.1") == 40.0  # the first failure, 20 s ago, frees it in 40
    assert guard.retry_after("10.0.0.2") is None  # per address
    clock.now += 39.5
    assert guard.retry_after("10.0.0.1") == 0.5
    clock.now += 0.5
    assert guard.retry_after("10.0.0.1") is None
    guard.failed("10.0.0.1")  # one more: the window now holds the last three
    assert guard.retry_after("10.0.0.1") == 10.0


def test_failures_spread_wider_than_the_window_never_hold_an_address():
    clock = Clock()
    guard = throttle(clock)
    for _ in range(20):
        guard.failed("10.0.0.1")
        assert guard.retry_after("10.0.0.1") is None
        clock.now += 31  # three failures span 62 s
    assert len(guard) == 1


def test_a_right_token_forgives_the_address():
    clock = Clock()
    guard = throttle(clock)
    for _ in range(2):
        guard.failed("10.0.0.1")
    guard.succeeded("10.0.0.1")
    guard.failed("10.0.0.1")
    assert guard.retry_after("10.0.0.1") is None
    assert len(guard) == 1


def test_memory_is_bounded_by_forgetting_the_address_that_failed_longest_ago():
    clock = Clock()
    guard = throttle(clock, capacity=3)
    for address in ("a", "b", "c"):
        for _ in range(3):
            guard.failed(address)
    guard.failed("a")  # `a` failed last now: `b` is the one that failed longest ago
    guard.failed("d")
    assert len(guard) == 3
    assert guard.retry_after("b") is None  # forgotten
    assert guard.retry_after("a") is not None and guard.retry_after("c") is not None
