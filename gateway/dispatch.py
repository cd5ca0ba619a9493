"""Runs a `Plan`: tries deployments in order, retries and falls back, all before the first
byte reaches the client (after that, a failure is the stream's to report in-band).

- A retryable failure (connect error, timeout, 408, 429, 5xx, 529) counts against the
  deployment's breaker and moves on: to another deployment of the model if there is one
  not yet tried, else the same one after an exponential backoff with full jitter (or the
  upstream's `retry-after`, when it fits in the deadline). `routing.retries` bounds the
  extra attempts per model; `routing.deadline` bounds them all.
- When a model's attempts are spent, its `fallbacks` are tried in order (those the team
  may use); a request refused as too long goes to `context_fallbacks` instead.
- Anything else (the client's own 4xx) is answered at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from gateway.backends.base import Deployment
from gateway.config import RoutingConfig
from gateway.errors import GatewayError, InvalidRequest, Overloaded, UpstreamTimeout
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
    plan: Plan,
    attempt: Callable[[Deployment], Awaitable[T]],
    exchange: Exchange,
    *,
    allowed: Callable[[str], bool] = lambda name: True,
    rng: random.Random | None = None,
) -> tuple[T, Deployment]:
    """The first successful `attempt` and the deployment that gave it. The caller must call
    `router.finished(deployment)` when it is done with the answer (a stream: at its end)."""
    rng = rng or router.rng
    deadline = exchange.started + config.deadline
    last: GatewayError | None = None
    plans = [plan]
    context_switched = False
    attempts = 0
    while plans:
        current = plans.pop(0)
        tried: set[tuple[str, str]] = set()
        for n in range(config.retries + 1):
            candidates = router.order(current)
            if not candidates:
                if last is None:
                    wait = router.cooling_for(current)
                    last = Overloaded(
                        f"every deployment of model '{current.model.name}' is cooling down after failures",
                        headers={"retry-after": str(max(1, round(wait)))},
                    )
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
            breaker = router.breaker(deployment)
            breaker.claim()
            router.started(deployment)
            try:
                result = await attempt(deployment)
            except GatewayError as error:
                router.finished(deployment)
                if retryable(error):
                    breaker.failure()
                    exchange.upstream_errors.append((deployment.backend_name, failure_kind(error)))
                    last = error
                    continue
                breaker.release_probe()
                if context_overflow(error) and current.model.context_fallbacks and not context_switched:
                    context_switched = True
                    exchange.upstream_errors.append((deployment.backend_name, "context_length"))
                    last = error
                    plans = _fallbacks(router, current.model.context_fallbacks, allowed)
                    break
                raise
            except BaseException:
                router.finished(deployment)
                breaker.release_probe()
                raise
            breaker.success()
            return result, deployment
        if not context_switched and current is plan:
            plans = _fallbacks(router, plan.model.fallbacks, allowed)
    if last is None:  # the deadline passed before any attempt could start
        raise UpstreamTimeout(f"no attempt could start within routing.deadline ({config.deadline:g} s)")
    raise last


def _fallbacks(router: Router, names: list[str], allowed: Callable[[str], bool]) -> list[Plan]:
    return [router.resolve(name) for name in names if allowed(name)]


def _delay(config: RoutingConfig, n: int, error: GatewayError | None, rng: random.Random) -> float:
    if error is not None and error.upstream_retry_after is not None:
        return error.upstream_retry_after
    return rng.random() * min(config.backoff_max, config.backoff_base * 2 ** max(n - 1, 0))
