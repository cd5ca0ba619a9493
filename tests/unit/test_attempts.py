"""The retry and fallback policy alone (`gateway/attempts.py`): a request's `Attempts` walked
step by step, with the time passed in and each failure told to it, as `dispatch.run` does,
but with no call, no wait and no clock. (`tests/unit/test_routing.py` drives the same
policy through `dispatch.run`.)"""

from __future__ import annotations

import random

import pytest

from gateway.attempts import Attempts, Step
from gateway.config import Config, parse
from gateway.errors import ContextWindowExceeded, GatewayError, InvalidRequest, Overloaded, RateLimited, UpstreamTimeout
from gateway.routing import Plan, Router
from gateway.translate.upstream_errors import error_from_upstream
from tests.support.doubles import Clock, FakeBackend

CONFIG = """
backends:
  a: {type: openai, base_url: "http://a.invalid/v1"}
  b: {type: openai, base_url: "http://b.invalid/v1"}
  c: {type: openai, base_url: "http://c.invalid/v1"}
  d: {type: anthropic, base_url: "http://d.invalid"}
models:
  - name: pair
    routes: [{backend: a, model: a-pair}, {backend: b, model: b-pair}]
    fallbacks: [second, third]
    context_fallbacks: [long]
  - name: second
    routes: [{backend: c, model: c-second}]
  - name: third
    routes: [{backend: d, model: d-third}]
  - name: long
    routes: [{backend: d, model: d-long}]
    context_fallbacks: [longer]
  - name: longer
    routes: [{backend: d, model: d-longer}]
  - name: solo
    routes: [{backend: a, model: a-solo}]
"""

NOW = 1000.0


def config(routing: str) -> Config:
    return parse(f"routing: {routing}\n{CONFIG}", env={})


def router(cfg: Config, clock: Clock | None = None) -> Router:
    backends = {name: FakeBackend(name) for name in cfg.backends}
    return Router(cfg, backends, rng=random.Random(1), clock=clock or Clock(0.0))  # type: ignore[arg-type]


def attempts(cfg: Config, r: Router, model: str, **options) -> Attempts:
    return Attempts(
        r, cfg.routing, r.candidates(model), deadline=NOW + cfg.routing.deadline, rng=random.Random(5), **options
    )


def upstream(status: int, message: str = "upstream says no", retry_after: str | None = None) -> GatewayError:
    headers = {"retry-after": retry_after} if retry_after is not None else None
    return error_from_upstream(status, b'{"error": {"message": "%s"}}' % message.encode(), headers)


def overflow() -> GatewayError:
    return upstream(400, "prompt is too long: 5000 tokens > 4096 maximum")


def tried(step: Step) -> str:
    assert step.wait is None, f"a wait of {step.wait} s, not an attempt"
    return step.deployment.upstream_model


FAST = "{retries: 2, backoff_base: 0.1, backoff_max: 0.3, deadline: 30, cooldown: {failures: 0}}"


def test_the_first_step_is_the_models_first_deployment_at_once():
    cfg = config(FAST)
    step = attempts(cfg, router(cfg), "solo").next(NOW)
    assert (tried(step), step.plan.model.name) == ("a-solo", "solo")
    assert (step.retry, step.fallback, step.panic) == (False, False, False)


def test_retries_are_spent_with_a_wait_before_each_then_the_last_failure_is_the_answer():
    cfg = config(FAST)
    plan = attempts(cfg, router(cfg), "solo")
    now, waits, failures = NOW, [], [upstream(500), upstream(429), upstream(503)]
    step = plan.next(now)
    for n, failure in enumerate(failures):
        assert tried(step) == "a-solo" and step.retry is (n > 0)
        assert plan.failed(failure) == ("status_429" if failure.upstream_status == 429 else "status_5xx")
        if n == len(failures) - 1:
            break
        wait = plan.next(now)
        assert wait.wait is not None and wait.deployment.upstream_model == "a-solo"
        waits.append(wait.wait)
        now += wait.wait
        step = plan.next(now)
    with pytest.raises(Overloaded) as caught:
        plan.next(now)  # 1 + retries: 2 tried; `solo` has no fallbacks
    assert caught.value is failures[-1]
    assert len(waits) == 2 and 0 <= waits[0] <= 0.1 and 0 <= waits[1] <= 0.2  # full jitter, doubling


def test_an_untried_deployment_goes_next_without_a_wait():
    cfg = config(FAST)
    plan = attempts(cfg, router(cfg), "pair")
    first = tried(plan.next(NOW))
    assert plan.failed(upstream(502)) == "status_5xx"
    second = plan.next(NOW)
    assert {first, tried(second)} == {"a-pair", "b-pair"} and second.retry and not second.fallback


def test_the_upstreams_retry_after_is_the_wait_and_one_past_the_deadline_moves_on():
    cfg = config("{retries: 3, deadline: 10, cooldown: {failures: 0}}")
    plan = attempts(cfg, router(cfg), "solo")
    plan.next(NOW)
    plan.failed(upstream(429, retry_after="2.5"))
    assert plan.next(NOW).wait == 2.5
    tried(plan.next(NOW + 2.5))
    plan.failed(upstream(429, retry_after="60"))  # past the deadline: no wait, no attempt
    with pytest.raises(RateLimited) as caught:
        plan.next(NOW + 2.5)
    assert caught.value.headers["retry-after"] == "60"


def test_spent_models_fall_back_in_order_and_only_to_those_allowed():
    cfg = config("{retries: 0, cooldown: {failures: 0}}")
    r = router(cfg)
    plan = attempts(cfg, r, "pair")
    seen = [tried(plan.next(NOW))]
    for _ in range(2):
        plan.failed(upstream(500))
        step = plan.next(NOW)
        assert step.fallback and step.retry
        seen.append(tried(step))
    assert seen[1:] == ["c-second", "d-third"]
    # `plans` is what the team may use: a fallback left out of it is never tried.
    plans = [p for p in r.candidates("pair") if p.model.name != "second"]
    plan = Attempts(r, cfg.routing, plans, deadline=NOW + 30, rng=random.Random(5))
    plan.next(NOW)
    plan.failed(upstream(500))
    assert tried(plan.next(NOW)) == "d-third"


def test_a_context_overflow_goes_to_the_context_fallbacks_once():
    cfg = config(FAST)
    plan = attempts(cfg, router(cfg), "pair")
    plan.next(NOW)
    error = overflow()
    assert isinstance(error, ContextWindowExceeded)
    assert plan.failed(error) == "context_length"
    step = plan.next(NOW)
    assert tried(step) == "d-long" and step.fallback  # not the other deployment, not `second`
    again = overflow()
    assert plan.failed(again) is None  # `long` has context fallbacks too, but one switch is all
    with pytest.raises(ContextWindowExceeded) as caught:
        plan.next(NOW)
    assert caught.value is again


def test_context_fallbacks_the_team_may_not_use_leave_the_overflow_as_the_answer():
    cfg = config(FAST)
    plan = attempts(cfg, router(cfg), "pair", allowed=lambda p: p.model.name != "long")
    plan.next(NOW)
    error = overflow()
    plan.failed(error)
    with pytest.raises(ContextWindowExceeded) as caught:
        plan.next(NOW)
    assert caught.value is error


def test_a_plain_client_error_is_the_answer_at_once():
    cfg = config(FAST)
    plan = attempts(cfg, router(cfg), "pair")
    plan.next(NOW)
    error = upstream(400, "messages: field required")
    assert type(error) is InvalidRequest
    assert plan.failed(error) is None
    with pytest.raises(InvalidRequest) as caught:
        plan.next(NOW)
    assert caught.value is error


def test_nothing_starts_past_the_deadline():
    cfg = config("{retries: 2, deadline: 5, cooldown: {failures: 0}}")
    plan = attempts(cfg, router(cfg), "solo")
    with pytest.raises(UpstreamTimeout):
        plan.next(NOW + 6)


def opened(r: Router, clock: Clock, *models: str) -> None:
    """Cool down every deployment of `models`, a second apart, in that order."""
    for model in models:
        for deployment in r.resolve(model).deployments:
            r.breaker(deployment).failure()
            clock.now += 1


def test_with_every_deployment_cooling_the_first_to_reopen_is_the_probe():
    clock = Clock(0.0)
    cfg = config("{retries: 2, cooldown: {failures: 1, seconds: 30}}")
    r = router(cfg, clock)
    opened(r, clock, "second", "pair", "third")
    plan = attempts(cfg, r, "pair")
    step = plan.next(NOW)
    assert (tried(step), step.plan.model.name) == ("c-second", "second")
    assert step.panic and step.fallback and not step.retry
    error = upstream(503)
    assert plan.failed(error) == "status_5xx"  # a failed probe counts, and is the answer
    with pytest.raises(Overloaded) as caught:
        plan.next(NOW)
    assert caught.value is error


def test_a_failed_probe_is_never_sent_on_to_the_context_fallbacks():
    clock = Clock(0.0)
    cfg = config("{retries: 2, cooldown: {failures: 1, seconds: 30}}")
    r = router(cfg, clock)
    opened(r, clock, "pair", "second", "third")
    plan = attempts(cfg, r, "pair")
    assert plan.next(NOW).panic
    assert plan.failed(overflow()) is None
    with pytest.raises(ContextWindowExceeded):
        plan.next(NOW)


@pytest.mark.parametrize(("status", "refusal"), [(503, Overloaded), (429, RateLimited)])
def test_refuse_when_all_open_is_an_answer_with_no_step(status, refusal):
    clock = Clock(0.0)
    cfg = config("{retries: 0, cooldown: {failures: 1, seconds: 30, when_all_open: refuse}}")
    r = router(cfg, clock)
    r.breaker(r.resolve("solo").primary).failure("status_429" if status == 429 else "status_5xx")
    clock.now += 10.4
    with pytest.raises(refusal) as caught:
        attempts(cfg, r, "solo").next(NOW)
    assert caught.value.headers["retry-after"] == "20" and "cooling down" in caught.value.message


def test_a_deployment_cooled_during_the_wait_is_not_tried():
    clock = Clock(0.0)
    cfg = config("{retries: 3, backoff_base: 0.1, cooldown: {failures: 2, seconds: 30}}")
    r = router(cfg, clock)
    plans: list[Plan] = [r.resolve("solo"), r.resolve("third")]
    plan = Attempts(r, cfg.routing, plans, deadline=NOW + 30, rng=random.Random(5))
    solo = tried(plan.next(NOW))
    plan.failed(upstream(500))
    r.breaker(r.resolve("solo").primary).failure()  # (dispatch's report of the failure)
    wait = plan.next(NOW)
    assert wait.wait is not None
    r.breaker(r.resolve("solo").primary).failure()  # meanwhile, another request's: it opens
    step = plan.next(NOW + wait.wait)
    assert (solo, tried(step)) == ("a-solo", "d-third") and step.fallback


def test_asking_for_a_step_after_an_attempt_needs_its_failure_first():
    cfg = config(FAST)
    plan = attempts(cfg, router(cfg), "solo")
    plan.next(NOW)
    with pytest.raises(RuntimeError, match="failed"):
        plan.next(NOW)  # the attempt succeeded, or the caller forgot to say how it failed
