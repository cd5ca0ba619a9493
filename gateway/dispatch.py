"""Runs a `Plan`: tries deployments in order, retries and falls back, all before the first
byte reaches the client (after that, a failure is the stream's to report in-band).

- A retryable failure (connect error, timeout, 408, 429, 5xx, 529) counts against the
  deployment's breaker and moves on: to another deployment of the model if there is one
  not yet tried, else the same one after an exponential backoff with full jitter (or the
  upstream's `retry-after`, when it fits in the deadline). `routing.retries` bounds the
  extra attempts per model; `routing.deadline` bounds them all.
- When a model's attempts are spent, the next of the request's models is tried: its
  fallbacks, in order, those the team may use (`routing.permitted` chose them before
  admission); a request refused as too long goes to `context_fallbacks` instead.
- Anything else (the client's own 4xx) is answered at once.
- When retries are spent, the client gets the last upstream failure's class (429 with
  the upstream's `retry-after`, 500 `api_error`, 502/503/529 as 529).
- When every deployment of the model and of its fallbacks is cooling down before any
  attempt, the one whose cooldown ends first is tried anyway (`cooldown.when_all_open:
  route`, the default), or the request is refused as 429 or 529 by why they cooled
  (`refuse`).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from gateway.backends.base import Deployment
from gateway.breaker import RATE_LIMITED
from gateway.config import RoutingConfig
from gateway.errors import GatewayError, InvalidRequest, Overloaded, RateLimited, UpstreamTimeout
from gateway.exchange import Exchange
from gateway.routing import Plan, Router

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504, 529})
_OVERFLOW = ("prompt is too long", "input length and `max_tokens` exceed context limit")


def retryable(error: GatewayError) -> bool:
    return error.upstream_failure is not None or error.upstream_status in RETRYABLE_STATUS


def context_overflow(error: GatewayError) -> bool:
    return isinstance(error, InvalidRequest) and error.message.startswith(_OVERFLOW)


def failure_kind(error: GatewayError) -> str:
    if error.upstream_failure is not None:
        return error.upstream_failure
    status = error.upstream_status or 0
    return "status_429" if status == 429 else "status_5xx" if status >= 500 else f"status_{status}"


async def run(
    router: Router,
    config: RoutingConfig,
    plans: Sequence[Plan],
    attempt: Callable[[Deployment], Awaitable[T]],
    exchange: Exchange,
    *,
    allowed: Callable[[Plan], bool] = lambda plan: True,
    rng: random.Random | None = None,
    judged_later: bool = False,
) -> tuple[T, Deployment]:
    """The first successful `attempt` and the deployment that gave it. `plans`: the models
    that may serve, in order (`routing.permitted`: the first, then its fallbacks the team
    may use); `allowed`: whether the team may use a context fallback. The caller must call
    `router.finished(deployment)` when it is done with the answer (a stream: at its end).
    `judged_later`: a success here says nothing yet about the deployment's health (a
    stream, which may still break); the caller reports it with `stream_ended`."""
    rng = rng or router.rng
    deadline = exchange.started + config.deadline
    last: GatewayError | None = None
    plan = plans[0]
    queue = list(plans)
    cooling: list[Plan] = []  # plans skipped because every deployment was cooling down
    context_switched = False
    attempts = 0
    while queue:
        current = queue.pop(0)
        tried: set[tuple[str, str]] = set()
        for n in range(config.retries + 1):
            candidates = router.order(current)
            if not candidates:
                if not tried:
                    cooling.append(current)
                break
            fresh = [d for d in candidates if (d.backend_name, d.upstream_model) not in tried]
            deployment = (fresh or candidates)[0]
            if attempts and not fresh:  # the same deployment again: give it a moment
                delay = _delay(config, n, last, rng)
                if time.perf_counter() + delay > deadline:
                    break
                await asyncio.sleep(delay)
                if not router.breaker(deployment).usable():
                    # Meanwhile other requests cooled it down or took its one probe.
                    candidates = router.order(current)
                    if not candidates:
                        break
                    deployment = candidates[0]
            if time.perf_counter() > deadline:
                break
            if attempts:
                exchange.retries += 1  # only attempts that start count
            if current is not plan and not tried:  # a fallback model that is actually tried
                exchange.fallbacks.append(current.model.name)
            attempts += 1
            tried.add((deployment.backend_name, deployment.upstream_model))
            try:
                return await _attempt(router, deployment, attempt, judged_later), deployment
            except GatewayError as error:
                if retryable(error):
                    exchange.upstream_errors.append((deployment.backend_name, failure_kind(error)))
                    last = error
                    continue
                if context_overflow(error) and current.model.context_fallbacks and not context_switched:
                    context_switched = True
                    exchange.upstream_errors.append((deployment.backend_name, "context_length"))
                    last = error
                    queue = _fallbacks(router, current.model.context_fallbacks, allowed)
                    break
                raise
    if last is not None:  # the class of the last upstream failure: 429 stays 429, 500 stays 500
        raise last
    if not cooling:  # the deadline passed before any attempt could start
        raise UpstreamTimeout(f"no attempt could start within routing.deadline ({config.deadline:g} s)")
    # Every deployment of the model and of its fallbacks is cooling down, and nothing was
    # tried: refusing now would turn one bad minute into an outage for every team. The one
    # whose cooldown ends first takes the request as its probe (Envoy's panic routing),
    # unless the operator chose to refuse.
    current, deployment = router.first_to_reopen(cooling)
    if config.cooldown.when_all_open == "refuse":
        raise _refusal(router, current, deployment)
    if time.perf_counter() > deadline:
        raise UpstreamTimeout(f"no attempt could start within routing.deadline ({config.deadline:g} s)")
    if current is not plan:
        exchange.fallbacks.append(current.model.name)
    exchange.panic = True
    try:
        return await _attempt(router, deployment, attempt, judged_later), deployment
    except GatewayError as error:
        if retryable(error):
            exchange.upstream_errors.append((deployment.backend_name, failure_kind(error)))
        raise


async def _attempt(
    router: Router, deployment: Deployment, attempt: Callable[[Deployment], Awaitable[T]], judged_later: bool
) -> T:
    """One call to one deployment, with its breaker told the outcome."""
    breaker = router.breaker(deployment)
    breaker.claim()
    router.started(deployment)
    try:
        result = await attempt(deployment)
    except GatewayError as error:
        router.finished(deployment)
        if retryable(error):
            breaker.failure(failure_kind(error))
        else:
            breaker.release_probe()
        raise
    except BaseException:
        router.finished(deployment)
        breaker.release_probe()
        raise
    if not judged_later:
        breaker.success()
    return result


def stream_ended(router: Router, deployment: Deployment, exchange: Exchange, *, completed: bool) -> None:
    """A stream `run` opened with `judged_later` is over: its deployment's breaker learns
    how it went. A failure after the stream started (a reset, a stall, bytes that are not
    the protocol, an in-band error) is the deployment's failure like one before it; a
    client that left, or a shutdown (`completed` False, no failure), says nothing of it."""
    breaker = router.breaker(deployment)
    kind = exchange.stream_failure
    if kind is not None:
        breaker.failure(kind)
        exchange.upstream_errors.append((deployment.backend_name, kind))
    elif completed and exchange.error_type is None:
        breaker.success()
    else:
        breaker.release_probe()


def _refusal(router: Router, plan: Plan, deployment: Deployment) -> GatewayError:
    breaker = router.breaker(deployment)
    headers = {"retry-after": str(max(1, math.ceil(breaker.retry_in())))}
    name = plan.model.name
    if breaker.cause == RATE_LIMITED:
        return RateLimited(
            f"every deployment of model '{name}' is cooling down after its backends rate limited it", headers=headers
        )
    return Overloaded(f"every deployment of model '{name}' is cooling down after failures", headers=headers)


def _fallbacks(router: Router, names: list[str], allowed: Callable[[Plan], bool]) -> list[Plan]:
    return [plan for plan in (router.resolve(name) for name in names) if allowed(plan)]


def _delay(config: RoutingConfig, n: int, error: GatewayError | None, rng: random.Random) -> float:
    if error is not None and error.upstream_retry_after is not None:
        return error.upstream_retry_after
    return rng.random() * min(config.backoff_max, config.backoff_base * 2 ** max(n - 1, 0))
