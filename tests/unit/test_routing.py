"""Routing without HTTP: `Router` (names, aliases, wildcards, default model, order by weight or
by load, cooling deployments left out) and `dispatch.run` driven by fake attempt coroutines
(retries, backoff, retry-after, deadline, fallbacks, context fallbacks, errors answered at once).

The clock and the random generator are injected; `asyncio.sleep` is replaced by a recorder,
so nothing here waits."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from gateway import dispatch, routing
from gateway.backends.base import Deployment
from gateway.breaker import State
from gateway.config import Config, parse
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    Overloaded,
    PermissionDenied,
    RateLimited,
    UpstreamTimeout,
)
from gateway.exchange import Exchange
from gateway.identity import ApiKey, Principal, Team
from gateway.routing import Router
from gateway.translate.upstream_errors import error_from_upstream
from tests.support.doubles import Clock, FakeBackend

BACKENDS = """
backends:
  a: {type: openai, base_url: "http://a.invalid/v1"}
  b: {type: openai, base_url: "http://b.invalid/v1"}
  c: {type: openai, base_url: "http://c.invalid/v1"}
  d: {type: anthropic, base_url: "http://d.invalid"}
"""

MODELS = """
models:
  - name: big
    aliases: [large, huge]
    routes: [{backend: a, model: a-big, weight: 3}, {backend: b, model: b-big, weight: 1}]
    fallbacks: [medium, small]
    context_fallbacks: [long]
  - name: medium
    routes: [{backend: c, model: c-medium}]
  - name: small
    routes: [{backend: d, model: d-small}]
  - name: long
    routes: [{backend: d, model: d-long}]
  - name: solo
    routes: [{backend: a, model: a-solo}]
  - name: solo-with-fallback
    routes: [{backend: a, model: a-solo2}]
    fallbacks: [small]
  - name: trio
    strategy: least_busy
    routes: [{backend: a, model: t, weight: 1}, {backend: b, model: t, weight: 5}, {backend: c, model: t, weight: 2}]
  - name: "openai/*"
    routes: [{backend: a}]
  - name: "openai/gpt-*"
    routes: [{backend: b, model: "azure-gpt-*-deploy"}]
"""


def config(routing: str = "{}", models: str = MODELS) -> Config:
    return parse(f"routing: {routing}\n{BACKENDS}{models}", env={})


def router(cfg: Config | None = None, *, seed: int = 7, clock: Clock | None = None) -> Router:
    cfg = cfg or config()
    backends = {name: FakeBackend(name) for name in cfg.backends}
    return Router(cfg, backends, rng=random.Random(seed), clock=clock or Clock(500.0))  # type: ignore[arg-type]


def names(deployments: list[Deployment]) -> list[str]:
    return [f"{d.backend_name}:{d.upstream_model}" for d in deployments]


# ====================================================================== resolve


def test_exact_name_and_aliases_resolve_to_one_plan():
    r = router()
    plan = r.resolve("big")
    assert plan.model.name == "big"
    assert names(list(plan.deployments)) == ["a:a-big", "b:b-big"]
    assert r.resolve("large") is plan and r.resolve("huge") is plan
    assert plan.primary.upstream_model == "a-big"


def test_longest_wildcard_prefix_wins_and_star_is_substituted():
    r = router()
    plan = r.resolve("openai/gpt-4o")
    assert plan.model.name == "openai/gpt-*"
    assert names(list(plan.deployments)) == ["b:azure-gpt-4o-deploy"]
    plan = r.resolve("openai/o3-mini")
    assert plan.model.name == "openai/*"
    assert names(list(plan.deployments)) == ["a:o3-mini"]  # the default route model `*`: the rest as is


def test_a_wildcard_needs_something_after_its_prefix():
    r = router()
    with pytest.raises(NotFound):
        r.resolve("openai/")
    assert r.resolve("openai/gpt-").model.name == "openai/*"  # too short for `openai/gpt-*`


def test_unknown_name_is_404_without_a_default():
    with pytest.raises(NotFound) as caught:
        router().resolve("nope")
    assert "nope" in caught.value.message


def test_default_model_takes_unknown_names():
    r = router(config("{default_model: medium}"))
    assert r.resolve("nope").model.name == "medium"
    assert r.resolve("big").model.name == "big"  # configured names still go where they say
    assert r.resolve("openai/x").model.name == "openai/*"  # and wildcards before the default


def test_default_model_may_be_an_alias():
    assert router(config("{default_model: large}")).resolve("nope").model.name == "big"


def test_a_catch_all_wildcard():
    models = MODELS + '  - name: "*"\n    routes: [{backend: c, model: "pre-*"}]\n'
    r = router(config(models=models))
    assert names(list(r.resolve("anything-at-all").deployments)) == ["c:pre-anything-at-all"]
    assert r.resolve("openai/gpt-5").model.name == "openai/gpt-*"  # longer prefixes first


def test_names_are_models_then_their_aliases_without_wildcards():
    assert router().names() == ["big", "large", "huge", "medium", "small", "long", "solo", "solo-with-fallback", "trio"]


# ====================================================================== who may be served by what


def principal(team_models: tuple[str, ...] = ("*",), key_models: tuple[str, ...] | None = None) -> Principal:
    key = ApiKey(id="k", prefix="gk-", hash="h", teams=("t",), default_team="t", models=key_models)
    return Principal(key=key, team=Team(id="t", models=team_models))


def test_a_plan_is_known_by_its_models_names_never_by_the_name_that_reached_the_default():
    r = router(config("{default_model: medium}"))
    assert r.resolve("large").names == ("big", "large", "huge")
    assert r.resolve("openai/gpt-4o").names == ("openai/gpt-4o",)  # what the wildcard took: the upstream's name
    assert r.resolve("small-but-unknown").names == ("medium",)


def test_candidates_are_the_model_then_its_fallbacks():
    r = router()
    assert [p.model.name for p in r.candidates("huge")] == ["big", "medium", "small"]
    assert [p.model.name for p in r.candidates("solo")] == ["solo"]


def test_permitted_judges_each_candidate_by_its_own_names():
    r = router(config("{default_model: big}"))
    # `small*` matches the unknown name, and the default (big) is not the team's; its
    # fallback small is, so it serves.
    assert [p.model.name for p in routing.permitted(r, principal(("small*",)), "small-bogus")] == ["small"]
    with pytest.raises(PermissionDenied) as caught:
        routing.permitted(r, principal(("solo*",)), "solo-bogus")
    assert caught.value.message == "team 't' may not use model 'solo-bogus'"  # the name asked for
    assert [p.model.name for p in routing.permitted(r, principal(("large",)), "big")] == ["big"]  # an alias names it
    # A key narrows its team: the same rule.
    assert [p.model.name for p in routing.permitted(r, principal(key_models=("medium",)), "big")] == ["medium"]
    with pytest.raises(PermissionDenied):
        routing.permitted(r, principal(key_models=("openai/gpt-4o",)), "openai/gpt-4.1")


# ====================================================================== order


def test_weighted_order_follows_the_weights():
    r = router(seed=1234)
    plan = r.resolve("big")  # a: 3, b: 1
    draws = 20000
    firsts = Counter(r.order(plan)[0].backend_name for _ in range(draws))
    assert firsts["a"] / draws == pytest.approx(0.75, abs=0.015)
    for _ in range(200):
        assert sorted(names(r.order(plan))) == ["a:a-big", "b:b-big"]  # every deployment, once


def test_weighted_order_of_three_proportions_and_second_places():
    models = """
models:
  - name: three
    routes: [{backend: a, model: x, weight: 1}, {backend: b, model: x, weight: 2}, {backend: c, model: x, weight: 7}]
"""
    r = router(config(models=models), seed=99)
    plan = r.resolve("three")
    draws = 20000
    orders = [tuple(d.backend_name for d in r.order(plan)) for _ in range(draws)]
    firsts = Counter(order[0] for order in orders)
    assert firsts["a"] / draws == pytest.approx(0.1, abs=0.015)
    assert firsts["b"] / draws == pytest.approx(0.2, abs=0.015)
    assert firsts["c"] / draws == pytest.approx(0.7, abs=0.015)
    # After c, the rest in proportion to what is left: b before a two times in three.
    after_c = [order[1] for order in orders if order[0] == "c"]
    assert after_c.count("b") / len(after_c) == pytest.approx(2 / 3, abs=0.03)


def test_least_busy_takes_the_fewest_in_flight_then_the_heaviest():
    r = router()
    plan = r.resolve("trio")  # a: 1, b: 5, c: 2
    assert [d.backend_name for d in r.order(plan)] == ["b", "c", "a"]  # all idle: by weight
    by_name = {d.backend_name: d for d in plan.deployments}
    r.started(by_name["b"])
    assert [d.backend_name for d in r.order(plan)] == ["c", "a", "b"]
    r.started(by_name["c"])
    r.started(by_name["c"])
    assert [d.backend_name for d in r.order(plan)] == ["a", "b", "c"]
    r.finished(by_name["c"])
    r.finished(by_name["c"])
    r.finished(by_name["b"])
    assert [d.backend_name for d in r.order(plan)] == ["b", "c", "a"]
    assert {h["backend"]: h["in_flight"] for h in r.health() if h["model"] == "trio"} == {"a": 0, "b": 0, "c": 0}


def test_cooling_deployments_are_left_out_until_half_open():
    clock = Clock(500.0)
    r = router(config("{cooldown: {failures: 2, window: 10, seconds: 30}}"), clock=clock)
    plan = r.resolve("big")
    a = plan.deployments[0]
    r.breaker(a).failure()
    assert sorted(names(r.order(plan))) == ["a:a-big", "b:b-big"]
    r.breaker(a).failure()
    for _ in range(50):
        assert names(r.order(plan)) == ["b:b-big"]
    assert r.breaker(r.first_to_reopen([plan])[1]).retry_in() == 0.0  # b is usable
    r.breaker(plan.deployments[1]).failure()
    r.breaker(plan.deployments[1]).failure()
    assert r.order(plan) == []
    clock.now += 12
    assert r.first_to_reopen([plan])[1] is a  # a opened first
    assert r.breaker(a).retry_in() == pytest.approx(18.0)
    clock.now += 18
    assert sorted(names(r.order(plan))) == ["a:a-big", "b:b-big"]  # both half-open
    r.breaker(a).claim()
    assert names(r.order(plan)) == ["b:b-big"]  # a's one probe is out


def test_breakers_are_per_deployment_and_shared_by_aliases_and_wildcard_names():
    r = router(config("{cooldown: {failures: 1}}"))
    r.breaker(r.resolve("large").deployments[0]).failure()
    assert names(r.order(r.resolve("big"))) == ["b:b-big"]
    r.breaker(r.resolve("openai/gpt-4o").deployments[0]).failure()
    assert r.order(r.resolve("openai/gpt-4o")) == []  # a new Plan, the same deployment
    assert r.order(r.resolve("openai/gpt-4.1")) != []  # another upstream model: its own breaker


def test_health_lists_every_deployment_once_with_its_state():
    clock = Clock(500.0)
    r = router(config("{cooldown: {failures: 1, seconds: 30}}"), clock=clock)
    r.breaker(r.resolve("big").deployments[1]).failure()
    clock.now += 10
    health = r.health()
    keys = [(h["backend"], h["upstream_model"]) for h in health]
    assert len(keys) == len(set(keys))  # aliases do not repeat a model's deployments
    by_key = {(h["backend"], h["upstream_model"]): h for h in health}
    assert by_key[("b", "b-big")] == {
        "model": "big",
        "backend": "b",
        "upstream_model": "b-big",
        "weight": 1.0,
        "state": "open",
        "retry_in": 20.0,
        "in_flight": 0,
    }
    assert by_key[("a", "a-big")]["state"] == "closed" and by_key[("a", "a-big")]["weight"] == 3.0
    clock.now += 20
    assert {(h["backend"], h["upstream_model"]): h for h in r.health()}[("b", "b-big")]["state"] == "half_open"


# ====================================================================== dispatch.run

FAST = "{retries: 2, backoff_base: 0.1, backoff_max: 0.3, deadline: 30, cooldown: {failures: 0}}"


def upstream(status: int, message: str = "upstream says no", retry_after: str | None = None) -> GatewayError:
    headers = {"retry-after": retry_after} if retry_after is not None else None
    return error_from_upstream(status, b'{"error": {"message": "%s"}}' % message.encode(), headers)


def refused() -> GatewayError:
    error = Overloaded("backend 'x' is unreachable")
    error.upstream_failure = "connect"
    return error


def timed_out() -> GatewayError:
    error = UpstreamTimeout("backend 'x' did not answer in time")
    error.upstream_failure = "timeout"
    return error


CONTEXT = "This model's maximum context length is 4096 tokens. However, your request has 5000 input tokens."


class Script:
    """A fake `attempt`: answers per upstream model name (`a-big`, …) from queued outcomes
    (an exception is raised, anything else returned; an empty queue answers "ok"), and
    records which deployments it was called with. With `clock`, each attempt takes `seconds`
    of its time."""

    def __init__(self, clock: FakeTime | None = None, seconds: float = 0.0, **outcomes: list) -> None:
        self.outcomes = {name.replace("_", "-"): list(queue) for name, queue in outcomes.items()}
        self.calls: list[str] = []
        self.clock, self.seconds = clock, seconds

    async def __call__(self, deployment: Deployment) -> str:
        self.calls.append(deployment.upstream_model)
        if self.clock is not None:
            self.clock.now += self.seconds
        queue = self.outcomes.get(deployment.upstream_model, [])
        outcome = queue.pop(0) if queue else "ok"
        if isinstance(outcome, BaseException):
            raise outcome
        return f"{outcome} from {deployment.upstream_model}"


class FakeTime:
    """Dispatch's clock and `asyncio.sleep`: a sleep is recorded and moves the clock on at once
    (`on_sleep` may act meanwhile, as other requests would)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []
        self.on_sleep: Callable[[], None] | None = None

    def perf_counter(self) -> float:
        return self.now

    async def sleep(self, delay: float, result=None):
        self.slept.append(delay)
        self.now += delay
        if self.on_sleep is not None:
            self.on_sleep()
        return result

    def exchange(self, **fields) -> Exchange:
        return Exchange(started=self.now, **fields)


@pytest.fixture
def fake(monkeypatch) -> FakeTime:
    t = FakeTime()
    monkeypatch.setattr(dispatch, "time", SimpleNamespace(perf_counter=t.perf_counter))
    monkeypatch.setattr(dispatch, "asyncio", SimpleNamespace(sleep=t.sleep))
    return t


@pytest.fixture
def sleeps(fake) -> list[float]:
    return fake.slept


async def run(
    r: Router,
    cfg: Config,
    model: str,
    script: Script,
    exchange: Exchange | None = None,
    *,
    allowed: Callable[[routing.Plan], bool] = lambda plan: True,
    **kwargs,
):
    """`allowed`: the fallbacks and context fallbacks the caller may use (the model asked for, it may)."""
    exchange = exchange or Exchange(started=dispatch.time.perf_counter())
    first, *fallbacks = r.candidates(model)
    plans = [first, *(plan for plan in fallbacks if allowed(plan))]
    result, deployment = await dispatch.run(r, cfg.routing, plans, script, exchange, allowed=allowed, **kwargs)
    return result, deployment, exchange


async def test_a_first_success_is_returned_and_left_in_flight_for_the_caller(fake, sleeps):
    cfg = config(FAST)
    r = router(cfg)
    script = Script()
    result, deployment, exchange = await run(r, cfg, "solo", script)
    assert result == "ok from a-solo" and deployment.upstream_model == "a-solo"
    assert (exchange.retries, exchange.fallbacks, exchange.upstream_errors, sleeps) == (0, [], [], [])
    assert {h["upstream_model"]: h["in_flight"] for h in r.health()}["a-solo"] == 1  # the caller finishes it
    r.finished(deployment)
    assert {h["upstream_model"]: h["in_flight"] for h in r.health()}["a-solo"] == 0


@pytest.mark.parametrize(
    "failure", [refused, timed_out, *(lambda s=s: upstream(s) for s in (408, 429, 500, 502, 503, 504, 529))]
)
async def test_each_retryable_failure_is_retried(fake, sleeps, failure):
    cfg = config(FAST)
    r = router(cfg)
    script = Script(a_solo=[failure()])
    result, _, exchange = await run(r, cfg, "solo", script)
    assert result == "ok from a-solo" and script.calls == ["a-solo", "a-solo"]
    assert exchange.retries == 1 and len(exchange.upstream_errors) == 1 and len(sleeps) == 1


async def test_retries_stop_at_retries_and_the_last_error_is_answered(fake, sleeps):
    cfg = config(FAST)
    r = router(cfg)
    script = Script(a_solo=[upstream(500), refused(), upstream(503), "never reached"])
    with pytest.raises(Overloaded) as caught:
        await run(r, cfg, "solo", script)
    assert caught.value.upstream_status == 503
    assert script.calls == ["a-solo"] * 3  # 1 + retries: 2
    assert len(sleeps) == 2
    assert {h["upstream_model"]: h["in_flight"] for h in r.health()}["a-solo"] == 0


async def test_the_exchange_records_retries_and_upstream_errors(fake, sleeps):
    cfg = config(FAST)
    r = router(cfg)
    exchange = fake.exchange()
    script = Script(a_solo=[upstream(500), refused(), upstream(429)])
    with pytest.raises(RateLimited):
        await run(r, cfg, "solo", script, exchange)
    assert exchange.retries == 2
    assert exchange.upstream_errors == [("a", "status_5xx"), ("a", "connect"), ("a", "status_429")]


async def test_retries_zero_means_one_attempt(fake, sleeps):
    cfg = config("{retries: 0, cooldown: {failures: 0}}")
    r = router(cfg)
    script = Script(a_solo=[upstream(500)])
    with pytest.raises(GatewayError):
        await run(r, cfg, "solo", script)
    assert script.calls == ["a-solo"] and sleeps == []


@pytest.mark.parametrize("seed", range(8))
async def test_a_retry_goes_to_an_untried_deployment_first_without_waiting(fake, sleeps, seed):
    cfg = config(FAST)
    r = router(cfg, seed=seed)
    calls: list[str] = []

    async def first_fails(deployment: Deployment) -> str:
        calls.append(deployment.upstream_model)
        if len(calls) == 1:
            raise refused()
        return "ok"

    # Whichever the weights put first fails; the other one answers, at once.
    _, deployment, exchange = await run(r, cfg, "big", first_fails)
    assert len(calls) == 2 and set(calls) == {"a-big", "b-big"}
    assert deployment.upstream_model == calls[1]
    assert sleeps == [] and exchange.retries == 1


async def test_with_every_deployment_tried_the_retry_waits_and_goes_again(fake, sleeps):
    cfg = config(FAST)
    r = router(cfg)
    script = Script(a_big=[upstream(500)], b_big=[upstream(500)])
    result, _, exchange = await run(r, cfg, "big", script)
    assert len(script.calls) == 3 and set(script.calls[:2]) == {"a-big", "b-big"}
    assert len(sleeps) == 1 and exchange.retries == 2


async def test_backoff_is_exponential_with_full_jitter_and_capped(fake, sleeps):
    cfg = config("{retries: 6, backoff_base: 0.1, backoff_max: 0.3, deadline: 30, cooldown: {failures: 0}}")
    bounds = [0.1, 0.2, 0.3, 0.3, 0.3, 0.3]  # base * 2^(n-1), at most backoff_max
    all_delays = []
    for seed in range(30):
        sleeps.clear()
        r = router(cfg)
        script = Script(a_solo=[upstream(500)] * 7)
        with pytest.raises(GatewayError):
            await run(r, cfg, "solo", script, rng=random.Random(seed))
        assert len(script.calls) == 7 and len(sleeps) == 6
        for delay, bound in zip(sleeps, bounds, strict=True):
            assert 0 <= delay <= bound
        all_delays.append(list(sleeps))
    # Jitter: the waits differ from one request to the next, and use most of their range.
    assert len({tuple(d) for d in all_delays}) == 30
    assert max(d[5] for d in all_delays) > 0.2 and min(d[5] for d in all_delays) < 0.1


async def test_retry_after_is_honoured(fake, sleeps):
    cfg = config(FAST)
    r = router(cfg)
    script = Script(a_solo=[upstream(429, retry_after="2.5"), upstream(503, retry_after="1")])
    result, _, exchange = await run(r, cfg, "solo", script)
    assert result == "ok from a-solo"
    assert sleeps == [2.5, 1.0]  # exactly what the upstream asked, not the backoff
    assert exchange.retries == 2


async def test_a_retry_after_beyond_the_deadline_skips_to_the_fallbacks(fake, sleeps):
    cfg = config("{retries: 3, backoff_base: 0.1, deadline: 10, cooldown: {failures: 0}}")
    r = router(cfg)
    script = Script(a_solo2=[upstream(429, retry_after="60")])
    result, deployment, exchange = await run(r, cfg, "solo-with-fallback", script)
    assert script.calls == ["a-solo2", "d-small"] and sleeps == []
    assert result == "ok from d-small" and exchange.fallbacks == ["small"]
    assert exchange.retries == 1  # the one attempt beyond the first: the fallback's
    assert exchange.upstream_errors == [("a", "status_429")]


async def test_a_retry_after_beyond_the_deadline_without_fallbacks_answers_the_429(fake, sleeps):
    cfg = config("{retries: 3, deadline: 10, cooldown: {failures: 0}}")
    r = router(cfg)
    exchange = fake.exchange()
    script = Script(a_solo=[upstream(429, retry_after="60")])
    with pytest.raises(RateLimited) as caught:
        await run(r, cfg, "solo", script, exchange)
    assert caught.value.headers["retry-after"] == "60"
    assert script.calls == ["a-solo"] and sleeps == []
    assert exchange.retries == 0  # no attempt beyond the first was made


async def test_no_attempt_starts_after_the_deadline(fake, sleeps):
    cfg = config("{retries: 5, backoff_base: 0.5, backoff_max: 1, deadline: 10, cooldown: {failures: 0}}")
    r = router(cfg)
    exchange = fake.exchange()
    script = Script(fake, 4.0, a_solo2=[upstream(500)] * 5, d_small=[upstream(500)])
    with pytest.raises(GatewayError) as caught:
        await run(r, cfg, "solo-with-fallback", script, exchange)
    # Attempts start at 0, ~4.x and ~8.x s (each takes 4 s, backoff ≤ 1 s between): the
    # next would start after 10 s, so neither a fourth attempt nor the fallback is made.
    assert script.calls == ["a-solo2"] * 3
    assert caught.value.upstream_status == 500
    assert exchange.retries == 2 and exchange.fallbacks == []


async def test_a_request_past_its_deadline_before_any_attempt_is_a_timeout(fake, sleeps):
    cfg = config("{retries: 2, deadline: 5, cooldown: {failures: 0}}")
    r = router(cfg)
    exchange = fake.exchange()
    fake.now += 6  # e.g. a slow upload ate the whole deadline
    script = Script()
    with pytest.raises(UpstreamTimeout):
        await run(r, cfg, "solo", script, exchange)
    assert script.calls == []


async def test_fallbacks_in_order_when_every_attempt_of_the_model_failed(fake, sleeps):
    cfg = config(FAST)
    r = router(cfg)
    script = Script(a_big=[upstream(500)] * 3, b_big=[upstream(500)] * 3, c_medium=[refused()] * 3)
    result, deployment, exchange = await run(r, cfg, "big", script)
    assert script.calls[3:] == ["c-medium"] * 3 + ["d-small"]
    assert sorted(script.calls[:3]) == ["a-big", "a-big", "b-big"] or sorted(script.calls[:3]) == [
        "a-big",
        "b-big",
        "b-big",
    ]
    assert result == "ok from d-small" and deployment.backend_name == "d"
    assert exchange.fallbacks == ["medium", "small"]
    assert exchange.retries == 6
    assert [kind for _, kind in exchange.upstream_errors] == ["status_5xx"] * 3 + ["connect"] * 3


async def test_only_fallbacks_the_caller_allows_are_tried(fake, sleeps):
    cfg = config(FAST)
    r = router(cfg)
    script = Script(a_big=[upstream(500)] * 3, b_big=[upstream(500)] * 3)
    result, _, exchange = await run(r, cfg, "big", script, allowed=lambda plan: plan.model.name != "medium")
    assert "c-medium" not in script.calls and script.calls[-1] == "d-small"
    assert exchange.fallbacks == ["small"]


async def test_with_no_fallback_allowed_the_models_last_error_is_answered(fake, sleeps):
    cfg = config(FAST)
    r = router(cfg)
    script = Script(a_big=[upstream(502)] * 3, b_big=[upstream(502)] * 3)
    with pytest.raises(Overloaded):
        await run(r, cfg, "big", script, allowed=lambda plan: False)
    assert len(script.calls) == 3


async def test_a_fallback_model_does_not_fall_back_further(fake, sleeps):
    models = MODELS + "  - name: chain\n    routes: [{backend: c, model: chain}]\n    fallbacks: [solo-with-fallback]\n"
    cfg = config("{retries: 0, cooldown: {failures: 0}}", models=models)
    r = router(cfg)
    script = Script(chain=[upstream(500)], a_solo2=[upstream(500)])
    with pytest.raises(GatewayError):
        await run(r, cfg, "chain", script)
    assert script.calls == ["chain", "a-solo2"]  # not on to solo-with-fallback's own `small`


async def test_context_overflow_goes_to_the_context_fallbacks_only(fake, sleeps):
    cfg = config(FAST)
    r = router(cfg)
    overflow = upstream(400, CONTEXT)
    script = Script(a_big=[overflow], b_big=[overflow])
    result, deployment, exchange = await run(r, cfg, "big", script, rng=random.Random(3))
    assert len(script.calls) == 2 and script.calls[1] == "d-long"  # not the other deployment, not `medium`
    assert result == "ok from d-long"
    assert exchange.fallbacks == ["long"]
    assert exchange.upstream_errors == [(script.calls[0][0], "context_length")]
    assert sleeps == []
    assert all(h["state"] == "closed" for h in r.health())  # the client's request, not the deployment, was wrong


async def test_context_overflow_without_context_fallbacks_is_answered_at_once(fake, sleeps):
    cfg = config(FAST)
    r = router(cfg)
    script = Script(a_solo2=[upstream(400, CONTEXT)])
    with pytest.raises(InvalidRequest) as caught:
        await run(r, cfg, "solo-with-fallback", script)
    assert caught.value.message.startswith("prompt is too long")
    assert script.calls == ["a-solo2"]  # not the ordinary fallback `small`


async def test_context_fallbacks_the_caller_may_not_use_are_skipped(fake, sleeps):
    cfg = config(FAST)
    r = router(cfg)
    script = Script(a_big=[upstream(400, CONTEXT)], b_big=[upstream(400, CONTEXT)])
    with pytest.raises(InvalidRequest):
        await run(r, cfg, "big", script, allowed=lambda plan: plan.model.name != "long")
    assert len(script.calls) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
async def test_non_retryable_errors_are_answered_at_once(fake, sleeps, status):
    cfg = config("{retries: 3, cooldown: {failures: 1}}")
    r = router(cfg)
    exchange = fake.exchange()
    script = Script(a_big=[upstream(status)], b_big=[upstream(status)])
    with pytest.raises(GatewayError) as caught:
        await run(r, cfg, "big", script, exchange)
    assert caught.value.upstream_status == status
    assert len(script.calls) == 1  # no retry, no other deployment, no fallback
    assert (exchange.retries, exchange.fallbacks, exchange.upstream_errors, sleeps) == (0, [], [], [])
    assert all(h["state"] == "closed" and h["in_flight"] == 0 for h in r.health())


async def test_an_error_without_an_upstream_cause_is_not_retried(fake, sleeps):
    cfg = config(FAST)
    r = router(cfg)
    script = Script(a_solo=[GatewayError("a bug in translation")])
    with pytest.raises(GatewayError):
        await run(r, cfg, "solo", script)
    assert script.calls == ["a-solo"]


async def test_failures_open_the_breaker_and_the_next_deployment_or_fallback_serves(fake, sleeps):
    clock = Clock(500.0)
    cfg = config("{retries: 5, backoff_base: 0.01, cooldown: {failures: 1, seconds: 30}}")
    r = router(cfg, clock=clock)
    script = Script(a_big=[upstream(500)], b_big=[upstream(500)])
    result, deployment, exchange = await run(r, cfg, "big", script)
    # Each deployment failed once and cooled down: no third attempt at either; `medium` served.
    assert sorted(script.calls[:2]) == ["a-big", "b-big"] and script.calls[2:] == ["c-medium"]
    assert exchange.fallbacks == ["medium"] and sleeps == []
    states = {h["upstream_model"]: h["state"] for h in r.health()}
    assert states["a-big"] == states["b-big"] == "open"


def cooled_solo(routing: str, after: float) -> tuple[Clock, Config, Router, Deployment]:
    """A router whose `solo` deployment failed once (opening a `failures: 1` breaker)
    `after` seconds ago."""
    clock = Clock(500.0)
    cfg = config(routing)
    r = router(cfg, clock=clock)
    solo = r.resolve("solo").primary
    r.breaker(solo).failure()
    clock.now += after
    return clock, cfg, r, solo


async def test_every_deployment_cooling_is_routed_to_the_one_that_reopens_first(fake, sleeps):
    """The bug: one model, one deployment, three failures (the SDK's own retries were
    enough), and every team got 529 for the whole cooldown, whatever the upstream did
    meanwhile. Now the request goes to the deployment anyway, as its probe."""
    _, cfg, r, solo = cooled_solo("{retries: 2, cooldown: {failures: 1, seconds: 30}}", 10.4)
    script = Script()
    result, deployment, exchange = await run(r, cfg, "solo", script)
    assert script.calls == ["a-solo"] and result == "ok from a-solo" and exchange.panic
    assert r.breaker(solo).state is State.CLOSED  # the upstream is back: so is the deployment


async def test_panic_picks_across_the_model_and_its_fallbacks_by_the_cooldown_left(fake, sleeps):
    clock = Clock(500.0)
    cfg = config("{retries: 2, cooldown: {failures: 1, seconds: 30}}")
    r = router(cfg, clock=clock)
    # big (a, b) falls back to medium (c) and small (d); all four open, c opened first.
    order = [
        r.resolve("medium").primary,
        r.resolve("big").deployments[0],
        r.resolve("big").deployments[1],
        r.resolve("small").primary,
    ]
    for deployment in order:
        r.breaker(deployment).failure()
        clock.now += 1
    script = Script()
    result, deployment, exchange = await run(r, cfg, "big", script)
    assert script.calls == ["c-medium"] and exchange.fallbacks == ["medium"] and exchange.panic


async def test_a_failed_panic_attempt_answers_its_own_error_and_reopens(fake, sleeps):
    _, cfg, r, solo = cooled_solo("{retries: 2, cooldown: {failures: 1, seconds: 30}}", 10)
    exchange = fake.exchange()
    with pytest.raises(GatewayError) as caught:
        await run(r, cfg, "solo", Script(a_solo=[upstream(500)]), exchange)
    assert caught.value.status == 500 and exchange.upstream_errors == [("a", "status_5xx")]
    assert r.breaker(solo).retry_in() == 30


@pytest.mark.parametrize(
    ("status", "refusal", "status_code"), [(503, Overloaded, 529), (500, Overloaded, 529), (429, RateLimited, 429)]
)
async def test_refuse_when_all_open_says_why_and_when(fake, sleeps, status, refusal, status_code):
    clock = Clock(500.0)
    cfg = config("{retries: 0, cooldown: {failures: 1, seconds: 30, when_all_open: refuse}}")
    r = router(cfg, clock=clock)
    with pytest.raises(GatewayError):
        await run(r, cfg, "solo", Script(a_solo=[upstream(status)]))
    clock.now += 10.4
    script = Script()
    with pytest.raises(refusal) as caught:
        await run(r, cfg, "solo", script)
    assert script.calls == []
    assert caught.value.status == status_code and caught.value.headers["retry-after"] == "20"
    assert "cooling down" in caught.value.message


@pytest.mark.parametrize(
    ("status", "answer", "error_type"),
    [
        (429, 429, "rate_limit_error"),
        (500, 500, "api_error"),
        (502, 529, "overloaded_error"),
        (503, 529, "overloaded_error"),
        (529, 529, "overloaded_error"),
        (504, 504, "timeout_error"),
    ],
)
async def test_when_retries_are_spent_the_client_gets_the_last_failures_class(fake, sleeps, status, answer, error_type):
    cfg = config("{retries: 2, backoff_base: 0, cooldown: {failures: 2, seconds: 30}}")
    r = router(cfg)
    script = Script(a_solo=[upstream(status, retry_after="7") for _ in range(3)])
    with pytest.raises(GatewayError) as caught:
        await run(r, cfg, "solo", script)
    assert len(script.calls) == 2  # the second failure opened the breaker: no third attempt
    assert (caught.value.status, caught.value.error_type) == (answer, error_type)
    if status == 429:
        assert caught.value.headers["retry-after"] == "7"  # the upstream's


async def test_a_stream_is_judged_when_it_ends(fake, sleeps):
    cfg = config("{retries: 0, cooldown: {failures: 2, seconds: 30}}")
    r = router(cfg)
    solo = r.resolve("solo").primary

    async def stream_once(kind: str | None, *, completed: bool = True, error_type: str | None = None) -> None:
        exchange = fake.exchange()
        _, deployment = await dispatch.run(r, cfg.routing, r.candidates("solo"), Script(), exchange, judged_later=True)
        exchange.stream_failure, exchange.error_type = kind, error_type
        r.finished(deployment)
        dispatch.stream_ended(r, deployment, exchange, completed=completed)
        if kind:
            assert exchange.upstream_errors == [("a", kind)]

    await stream_once("stream_reset")
    await stream_once(None, completed=False)  # the client left: says nothing
    await stream_once(None, error_type="client_disconnected")
    assert r.breaker(solo).state is State.CLOSED
    await stream_once("stream_error")  # the second failure in the window
    assert r.breaker(solo).state is State.OPEN


async def test_a_clean_stream_clears_past_failures(fake, sleeps):
    cfg = config("{retries: 0, cooldown: {failures: 2, seconds: 30}}")
    r = router(cfg)
    solo = r.resolve("solo").primary
    r.breaker(solo).failure()
    exchange = fake.exchange()
    _, deployment = await dispatch.run(r, cfg.routing, r.candidates("solo"), Script(), exchange, judged_later=True)
    assert not r.breaker(solo).pristine  # not judged yet
    dispatch.stream_ended(r, deployment, exchange, completed=True)
    assert r.breaker(solo).pristine


async def test_a_cooling_model_goes_straight_to_its_fallback(fake, sleeps):
    cfg = config("{retries: 2, cooldown: {failures: 1, seconds: 30}}")
    r = router(cfg)
    r.breaker(r.resolve("solo-with-fallback").primary).failure()
    script = Script()
    result, _, exchange = await run(r, cfg, "solo-with-fallback", script)
    assert script.calls == ["d-small"] and exchange.fallbacks == ["small"]


async def test_the_half_open_probe_is_claimed_and_its_success_closes_the_breaker(fake, sleeps):
    _, cfg, r, solo = cooled_solo("{retries: 0, cooldown: {failures: 1, seconds: 30, when_all_open: refuse}}", 30)
    gate = asyncio.Event()

    async def slow(deployment: Deployment) -> str:
        await gate.wait()
        return "probe ok"

    probe = asyncio.create_task(dispatch.run(r, cfg.routing, r.candidates("solo"), slow, fake.exchange()))
    await asyncio.sleep(0)
    assert r.breaker(solo).state is State.HALF_OPEN and not r.breaker(solo).usable()
    # Meanwhile, another request finds nothing usable.
    with pytest.raises(Overloaded):
        await dispatch.run(r, cfg.routing, r.candidates("solo"), Script(), fake.exchange())
    gate.set()
    result, deployment = await probe
    assert result == "probe ok" and r.breaker(solo).state is State.CLOSED


async def test_a_failed_probe_reopens_and_a_non_retryable_one_releases_it(fake, sleeps):
    clock, cfg, r, solo = cooled_solo("{retries: 0, cooldown: {failures: 1, seconds: 30}}", 30)
    with pytest.raises(GatewayError):
        await run(r, cfg, "solo", Script(a_solo=[upstream(503)]))
    assert r.breaker(solo).state is State.OPEN and r.breaker(solo).retry_in() == 30
    clock.now += 30
    with pytest.raises(InvalidRequest):
        await run(r, cfg, "solo", Script(a_solo=[upstream(400)]))
    assert r.breaker(solo).state is State.HALF_OPEN and r.breaker(solo).usable()


async def test_a_cancelled_attempt_gives_back_its_in_flight_count_and_probe(fake, sleeps):
    clock, cfg, r, solo = cooled_solo("{retries: 0, cooldown: {failures: 1, seconds: 30}}", 30)

    async def forever(deployment: Deployment) -> str:
        await asyncio.Event().wait()
        return "never"

    task = asyncio.create_task(dispatch.run(r, cfg.routing, r.candidates("solo"), forever, fake.exchange()))
    await asyncio.sleep(0)
    assert {h["upstream_model"]: h["in_flight"] for h in r.health()}["a-solo"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert {h["upstream_model"]: h["in_flight"] for h in r.health()}["a-solo"] == 0
    assert r.breaker(solo).usable()  # the probe was given back


async def test_after_a_backoff_a_deployment_cooled_meanwhile_is_not_hit(fake, sleeps):
    cfg = config("{retries: 3, backoff_base: 0.1, cooldown: {failures: 5, seconds: 30}}")
    r = router(cfg)
    deployment = r.resolve("solo-with-fallback").primary

    def others_fail_meanwhile() -> None:
        for _ in range(5):
            r.breaker(deployment).failure()

    fake.on_sleep = others_fail_meanwhile
    script = Script(a_solo2=[upstream(500)])
    result, served, exchange = await run(r, cfg, "solo-with-fallback", script)
    assert len(sleeps) == 1
    assert script.calls == ["a-solo2", "d-small"]  # not a second hit on the open breaker
    assert result == "ok from d-small" and exchange.fallbacks == ["small"]


async def test_wildcard_names_chosen_by_clients_do_not_pile_up_state(fake, sleeps, monkeypatch):
    monkeypatch.setattr(routing, "PRUNE_AT", 50)
    cfg = config("{retries: 0, cooldown: {failures: 1, seconds: 30}}")
    r = router(cfg)
    failing = r.resolve("openai/broken").primary
    r.breaker(failing).failure()  # one with something to remember
    for i in range(2000):
        _, deployment, _ = await run(r, cfg, f"openai/made-up-{i}", Script())
        r.finished(deployment)
    assert len(r._breakers) <= 100 and r._in_flight == {}
    assert r.order(r.resolve("openai/broken")) == []  # the open breaker was kept
