"""Runs a request's attempts (`attempts.Attempts`, the retry and fallback policy) against
its deployments, all before the first byte reaches the client (after that, a failure is
the stream's to report in-band): the waits, the calls, each deployment's breaker and
in-flight count told how its attempt went, and the exchange told what happened.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from gateway.attempts import Attempts, Step, failure_kind, retryable
from gateway.backends.base import Deployment
from gateway.config import RoutingConfig
from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.routing import Plan, Router

T = TypeVar("T")

__all__ = ["failure_kind", "retryable", "run", "stream_ended"]


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
    may use); `allowed`: whether the team may use a context fallback. Raises the error the
    client gets when no attempt succeeded. The caller must call `router.finished(deployment)`
    when it is done with the answer (a stream: at its end). `judged_later`: a success here
    says nothing yet about the deployment's health (a stream, which may still break); the
    caller reports it with `stream_ended`."""
    schedule = Attempts(
        router, config, plans, deadline=exchange.started + config.deadline, rng=rng or router.rng, allowed=allowed
    )
    while True:
        step = schedule.next(time.perf_counter())  # raises the answer when nothing is left to try
        if step.wait is not None:
            await asyncio.sleep(step.wait)
            continue
        _starting(exchange, step)
        try:
            return await _attempt(router, step.deployment, attempt, judged_later), step.deployment
        except GatewayError as error:
            kind = schedule.failed(error)
            if kind is not None:
                exchange.upstream_errors.append((step.deployment.backend_name, kind))


def _starting(exchange: Exchange, step: Step) -> None:
    if step.retry:
        exchange.retries += 1  # only attempts that start count
    if step.fallback:  # a fallback model that is actually tried
        exchange.fallbacks.append(step.plan.model.name)
    if step.panic:
        exchange.panic = True


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
