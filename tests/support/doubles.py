"""Stand-ins for the parts a pure unit test does not exercise: a clock the test moves by
hand, and a backend that only has a name (routing and admission never call one)."""

from __future__ import annotations

from dataclasses import dataclass


class Clock:
    """`time.monotonic` as the test sets it: `clock.now = ...` or `clock.advance(s)`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeBackend:
    name: str
    kind: str = "fake"
