"""The operator's bearer tokens (`admin.token`, `server.metrics_token`): compared in
constant time, and guessing them throttled per source address.

After `FAILURES` missing or wrong tokens from one address within `WINDOW` seconds, that
address is answered 429 with `retry-after`, its token not even compared, until the oldest
of those failures is `WINDOW` seconds old. A right token clears the address's failures.
At most `ADDRESSES` addresses are remembered (the one that failed longest ago is forgotten
first), so failures from many addresses cost a bounded amount of memory.

The source address is the peer's: behind a proxy every request comes from the proxy, and
the throttle holds for all of them at once (one more reason to put `/admin` on its own
listener, `server.admin_listen`, off the proxied path).
"""

from __future__ import annotations

import hmac
import math
import time
from collections import deque
from collections.abc import Callable

from aiohttp import web
from pydantic import SecretStr

from gateway.errors import AuthenticationFailed, RateLimited

FAILURES = 10
WINDOW = 60.0
ADDRESSES = 4096


class FailureThrottle:
    """Recent token failures per source address (see the module's docstring)."""

    __slots__ = ("_failures", "_limit", "_window", "_capacity", "_clock")

    def __init__(
        self,
        limit: int = FAILURES,
        window: float = WINDOW,
        capacity: int = ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Address → the times of its last `limit` failures; the most recent failer last.
        self._failures: dict[str, deque[float]] = {}
        self._limit, self._window, self._capacity, self._clock = limit, window, capacity, clock

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, address: str) -> float | None:
        """Seconds `address` must wait before its token is looked at again; None: now."""
        times = self._failures.get(address)
        if times is None or len(times) < self._limit:
            return None
        wait = times[0] + self._window - self._clock()
        return wait if wait > 0 else None

    def failed(self, address: str) -> None:
        times = self._failures.pop(address, None)
        if times is None:
            if len(self._failures) >= self._capacity:
                del self._failures[next(iter(self._failures))]
            times = deque(maxlen=self._limit)
        times.append(self._clock())
        self._failures[address] = times

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


def check_bearer(request: web.Request, token: SecretStr, throttle: FailureThrottle, *, realm: str, wrong: str) -> None:
    """Pass, or raise: 429 while the source address is throttled, else 401 (`wrong`, which
    names the token's setting, never its value) for a missing or wrong
    `Authorization: Bearer` token. `realm` names what the token opens."""
    address = request.remote or ""
    wait = throttle.retry_after(address)
    if wait is not None:
        seconds = math.ceil(wait)
        raise RateLimited(
            f"{realm}: too many failed attempts from this address; retry in {seconds}s",
            headers={"retry-after": str(seconds)},
        )
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    # Constant time, so the token cannot be guessed a character at a time from timings.
    # A header's bytes past ASCII arrive surrogate-escaped: encoded back as they came.
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode("utf-8", "surrogateescape"), expected):
        throttle.failed(address)
        raise AuthenticationFailed(wrong, headers={"www-authenticate": f'Bearer realm="{realm}"'})
    throttle.succeeded(address)
