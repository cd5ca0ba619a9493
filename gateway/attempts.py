"""The retry and fallback policy of one request, as a plan of attempts that does no I/O.

`Attempts` says what to do next: try a deployment, wait before trying one, or give up
with the error the client gets. Its caller (`dispatch.run`) does the waiting and the
calls, and tells it how each attempt failed; time is read by the caller and passed in,
so the plan can be walked step by step in a test, with no clock and no upstream.

- A retryable failure (connect error, timeout, 408, 429, 5xx, 529) moves on: to another
  deployment of the model if there is one not yet tried, else the same one after an
  exponential backoff with full jitter (or the upstream's `retry-after`, when it fits in
  the deadline). `routing.retries` bounds the extra attempts per model; `routing.deadline`
  bounds them all.
- When a model's attempts are spent, the next of the request's models is tried: its
  fallbacks, in order, those the team may use. A `ContextWindowExceeded` goes to the
  model's `context_fallbacks` instead (once per request), those the team may use.
- Anything else (the client's own 4xx) is the answer at once.
- When retries are spent, the answer is the last failure (its class, its `retry-after`).
- When every deployment of the model and of its fallbacks was cooling down and nothing
  was tried, the one whose cooldown ends first gets the request anyway, as its probe
  (`cooldown.when_all_open: route`), or the request is refused as 429 or 529 by why they
  cooled (`refuse`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum

from gateway.backends.base import Deployment
from gateway.breaker import RATE_LIMITED
from gateway.config import RoutingConfig
from gateway.errors import ContextWindowExceeded, GatewayError, Overloaded, RateLimited, UpstreamTimeout
from gateway.routing import Plan, Router

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504, 529})


def retryable(error: GatewayError) -> bool:
    """A failure another attempt may not meet: the upstream's, not the request's."""
    return error.upstream_failure is not None or error.upstream_status in RETRYABLE_STATUS


def failure_kind(error: GatewayError) -> str:
    """A retryable failure's kind, as breakers, metrics and the access log name it."""
    if error.upstream_failure is not None:
        return error.upstream_failure
    status = error.upstream_status or 0
    return "status_429" if status == 429 else "status_5xx" if status >= 500 else f"status_{status}"


@dataclass(frozen=True, slots=True)
class Step:
    """The next thing to do: try `deployment` of `plan`'s model; or, when `wait` is not
    None, wait that many seconds and ask again (the deployment may have cooled meanwhile:
    the next step says which to try)."""

    plan: Plan
    deployment: Deployment
    wait: float | None = None
    retry: bool = False  # an attempt after the request's first
    fallback: bool = False  # the first attempt at a model other than the one asked for
    panic: bool = False  # sent to a cooling deployment, since every one was cooling


class _Verdict(Enum):
    RETRY = "retry"  # the upstream failed: retry, or fall back
    CONTEXT = "context"  # too long for the model: on to its context fallbacks
    ANSWER = "answer"  # the failure is the answer


class Attempts:
    """One request's attempts over `plans` (the models that may serve, in order: the first,
    then its fallbacks the team may use). Call `next` for each step; after a failed
    attempt, `failed` first. `next` raises the error the client gets when nothing is left
    to try. `allowed`: whether the team may use a context fallback."""

    def __init__(
        self,
        router: Router,
        config: RoutingConfig,
        plans: Sequence[Plan],
        *,
        deadline: float,
        rng: random.Random,
        allowed: Callable[[Plan], bool] = lambda plan: True,
    ) -> None:
        self._router = router
        self._config = config
        self._deadline = deadline
        self._rng = rng
        self._allowed = allowed
        self._now = 0.0
        self._current = plans[0]  # the model being tried
        self._attempts = 0
        self._last: GatewayError | None = None  # the last failure that let the request go on
        self._failure: GatewayError | None = None  # the last attempt's
        self._verdict: _Verdict | None = None  # how the last attempt failed, once `failed` was told
        self._context_switched = False
        self._panic = False
        self._steps = self._walk(list(plans))

    def next(self, now: float) -> Step:
        """What to do at `now` (the caller's clock, the one `deadline` is on)."""
        self._now = now
        return next(self._steps)

    def failed(self, error: GatewayError) -> str | None:
        """The last step's attempt failed with `error`: the kind of upstream failure it
        counts as on the exchange (None: it counts as none)."""
        self._failure = error
        if retryable(error):
            self._verdict, self._last = _Verdict.RETRY, error
            return failure_kind(error)
        if self._to_context_fallbacks(error):
            self._verdict, self._last = _Verdict.CONTEXT, error
            return "context_length"
        self._verdict = _Verdict.ANSWER
        return None

    def _to_context_fallbacks(self, error: GatewayError) -> bool:
        return (
            isinstance(error, ContextWindowExceeded)
            and not self._panic
            and not self._context_switched
            and bool(self._current.model.context_fallbacks)
        )

    def _walk(self, queue: list[Plan]) -> Iterator[Step]:
        first = queue[0]
        cooling: list[Plan] = []  # models skipped because every deployment was cooling down
        while queue:
            current = self._current = queue.pop(0)
            tried: set[tuple[str, str]] = set()
            for n in range(self._config.retries + 1):
                deployment = yield from self._pick(current, n, tried)
                if deployment is None:
                    if not tried:  # nothing to try and nothing tried yet: every deployment is cooling
                        cooling.append(current)
                    break
                if self._now > self._deadline:
                    break
                step = Step(current, deployment, retry=self._attempts > 0, fallback=current is not first and not tried)
                self._attempts += 1
                tried.add(_key(deployment))
                self._verdict = None
                yield step
                verdict = self._told()
                if verdict is _Verdict.RETRY:
                    continue
                if verdict is _Verdict.CONTEXT:
                    self._context_switched = True
                    queue = self._context_fallbacks(current)
                    break
                raise self._answer()
        if self._last is not None:  # the class of the last upstream failure: 429 stays 429, 500 stays 500
            raise self._last
        self._verdict = None
        yield self._panic_step(first, cooling)
        self._told()
        raise self._answer()  # a probe that failed is the answer, whatever its failure

    def _pick(self, current: Plan, n: int, tried: set[tuple[str, str]]) -> Generator[Step, None, Deployment | None]:
        """The deployment of `current` for its attempt `n`: one not yet tried, else one
        tried, after a wait (a `Step` with `wait`, yielded). None: the model has no
        attempt left now (all cooling, or no time for the wait)."""
        candidates = self._router.order(current)
        if not candidates:
            return None
        fresh = [d for d in candidates if _key(d) not in tried]
        deployment = (fresh or candidates)[0]
        if self._attempts and not fresh:  # the same deployment again: give it a moment
            delay = _delay(self._config, n, self._last, self._rng)
            if self._now + delay > self._deadline:
                return None
            yield Step(current, deployment, wait=delay)
            if not self._router.breaker(deployment).usable():
                # Meanwhile other requests cooled it down or took its one probe.
                candidates = self._router.order(current)
                if not candidates:
                    return None
                deployment = candidates[0]
        return deployment

    def _panic_step(self, first: Plan, cooling: list[Plan]) -> Step:
        """Nothing was tried. Every deployment of the model and of its fallbacks cooling
        down: refusing now would turn one bad minute into an outage for every team, so the
        one whose cooldown ends first takes the request as its probe (Envoy's panic
        routing), unless the operator chose to refuse."""
        if not cooling:  # the deadline passed before any attempt could start
            raise self._timeout()
        current, deployment = self._router.first_to_reopen(cooling)
        if self._config.cooldown.when_all_open == "refuse":
            raise _refusal(self._router, current, deployment)
        if self._now > self._deadline:
            raise self._timeout()
        self._current, self._panic = current, True
        return Step(current, deployment, fallback=current is not first, panic=True)

    def _told(self) -> _Verdict:
        """How the attempt just yielded failed (the caller asks again only after one did)."""
        if self._verdict is None:
            raise RuntimeError("Attempts.next after an attempt step, without `failed` first")
        return self._verdict

    def _answer(self) -> GatewayError:
        if self._failure is None:  # (only after `_told`: `failed` sets both)
            raise RuntimeError("no attempt failed")
        return self._failure

    def _timeout(self) -> UpstreamTimeout:
        return UpstreamTimeout(f"no attempt could start within routing.deadline ({self._config.deadline:g} s)")

    def _context_fallbacks(self, plan: Plan) -> list[Plan]:
        names = plan.model.context_fallbacks
        return [fallback for fallback in (self._router.resolve(name) for name in names) if self._allowed(fallback)]


def _key(deployment: Deployment) -> tuple[str, str]:
    return deployment.backend_name, deployment.upstream_model


def _refusal(router: Router, plan: Plan, deployment: Deployment) -> GatewayError:
    breaker = router.breaker(deployment)
    headers = {"retry-after": str(max(1, math.ceil(breaker.retry_in())))}
    name = plan.model.name
    if breaker.cause == RATE_LIMITED:
        return RateLimited(
            f"every deployment of model '{name}' is cooling down after its backends rate limited it", headers=headers
        )
    return Overloaded(f"every deployment of model '{name}' is cooling down after failures", headers=headers)


def _delay(config: RoutingConfig, n: int, error: GatewayError | None, rng: random.Random) -> float:
    if error is not None and error.upstream_retry_after is not None:
        return error.upstream_retry_after
    return rng.random() * min(config.backoff_max, config.backoff_base * 2 ** max(n - 1, 0))
