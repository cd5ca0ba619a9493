"""What the store and the limiter tell whoever watches them work (the app's metrics:
`observe/metrics.RedisObserver`).

Every store and every limiter has an `observer` attribute, None until the app sets it, so
the app sets it without asking which kind it holds. Those on Redis report each round
trip and the limiter's outages; those in memory make no round trips and report nothing.
"""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def round_trip(self, component: str, operation: str, seconds: float, error: BaseException | None = None) -> None:
        """One operation on Redis, and what it raised, if anything."""

    def limiter_event(self, event: str) -> None:
        """`outage`, `recovered`, `fallback_admission`, `refused_admission`, `lost_settlement`."""
