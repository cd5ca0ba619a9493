"""Model name → the deployments that serve it, and in which order to try them.

Built once per configuration: a reload builds a new `Router` and swaps it whole, so a
request keeps the routes it started with. Names resolve in this order: a configured name
or alias; the longest wildcard prefix (`openai/*` takes `openai/gpt-4o`, and its routes'
`*` becomes `gpt-4o`); the configured default model; else 404.

A team is authorized for the model that serves, never for the name it asked for: a name
nobody configured may match a team's `models` pattern (`cheap-*`) and still reach
`default_model`. `permitted` gives the models a request may be served by, by their own
names (`Plan.names`); the handlers ask nothing else.

Each deployment has a circuit breaker and an in-flight count, both of this process.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.backends import Backend, Deployment
from gateway.breaker import Breaker, State
from gateway.config import Config, CooldownConfig, ModelConfig
from gateway.errors import NotFound, PermissionDenied
from gateway.identity import Principal

# Breakers are made on first use; a wildcard lets clients name any number of upstream
# models, so past this many the ones with nothing to remember are forgotten.
PRUNE_AT = 4096


@dataclass(frozen=True, slots=True)
class Plan:
    """What to try for one request: the model, its deployments, where to fall back."""

    model: ModelConfig
    deployments: tuple[Deployment, ...]
    # What a team's `models` patterns are matched against: the model's name and aliases,
    # or for a wildcard the name it took (that name picks the upstream model). Never a
    # name that reached the model only through `default_model`.
    names: tuple[str, ...]

    @property
    def primary(self) -> Deployment:
        return self.deployments[0]


class Router:
    def __init__(
        self,
        config: Config,
        backends: Mapping[str, Backend],
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backends = backends
        self._cooldown: CooldownConfig = config.routing.cooldown
        self._clock = clock
        self.rng = rng or random.Random()
        self._plans: dict[str, Plan] = {}
        self._wildcards: list[tuple[str, ModelConfig]] = []
        self._breakers: dict[tuple[str, str], Breaker] = {}
        self._in_flight: dict[tuple[str, str], int] = {}
        self._prune_at = PRUNE_AT
        self._names: list[str] = []
        for model in config.models:
            if model.name.endswith("*"):
                self._wildcards.append((model.name[:-1], model))
                continue
            plan = Plan(model=model, deployments=self._deployments(model), names=(model.name, *model.aliases))
            for name in plan.names:
                self._plans[name] = plan
                self._names.append(name)
        self._wildcards.sort(key=lambda item: len(item[0]), reverse=True)
        self._default = config.routing.default_model

    def _deployments(self, model: ModelConfig, rest: str | None = None) -> tuple[Deployment, ...]:
        """`rest`: what a wildcard matched, standing in for `*` in the routes' models."""
        return tuple(
            Deployment(
                backend=self._backends[route.backend],
                upstream_model=route.model if rest is None else route.model.replace("*", rest),
                route=route,
                default_max_tokens=model.default_max_tokens,
            )
            for route in model.routes
        )

    def resolve(self, name: str) -> Plan:
        plan = self._plans.get(name)
        if plan is not None:
            return plan
        for prefix, model in self._wildcards:
            if name.startswith(prefix) and len(name) > len(prefix):
                return Plan(model=model, deployments=self._deployments(model, name[len(prefix) :]), names=(name,))
        if self._default is not None and name != self._default:
            return self.resolve(self._default)
        raise NotFound(f"model: {name}")

    def candidates(self, name: str) -> list[Plan]:
        """The models that may serve a request for `name`, in the order they are tried:
        the one it resolves to, then that model's fallbacks."""
        plan = self.resolve(name)
        if not plan.model.fallbacks:
            return [plan]
        return [plan, *(self.resolve(fallback) for fallback in plan.model.fallbacks)]

    def names(self) -> list[str]:
        """Every name a client may ask for (wildcards excepted): models, each followed by its aliases."""
        return list(self._names)

    # ------------------------------------------------------------------ choosing

    def order(self, plan: Plan) -> list[Deployment]:
        """The plan's deployments in the order to try them: those whose breaker lets a
        request through, by the model's strategy; cooling ones are left out."""
        deployments = plan.deployments
        if len(deployments) == 1:  # most models: nothing to order
            return [deployments[0]] if self.breaker(deployments[0]).usable() else []
        open_ = [d for d in deployments if self.breaker(d).usable()]
        if plan.model.strategy == "least_busy":
            self.rng.shuffle(open_)  # ties broken at random, then weight
            open_.sort(key=lambda d: (self._in_flight.get(_id(d), 0), -d.route.weight))
            return open_
        return self._weighted(open_)

    def _weighted(self, deployments: list[Deployment]) -> list[Deployment]:
        """A weighted random order (each next pick in proportion to the weights left)."""
        if len(deployments) < 2:
            return list(deployments)
        left = list(deployments)
        ordered = []
        while left:
            total = sum(d.route.weight for d in left)
            point = self.rng.random() * total
            for i, deployment in enumerate(left):
                point -= deployment.route.weight
                if point <= 0 or i == len(left) - 1:
                    ordered.append(left.pop(i))
                    break
        return ordered

    def breaker(self, deployment: Deployment) -> Breaker:
        key = _id(deployment)
        breaker = self._breakers.get(key)
        if breaker is None:
            if len(self._breakers) >= self._prune_at:
                self._prune()
            breaker = self._breakers[key] = Breaker(
                failures=self._cooldown.failures,
                window=self._cooldown.window,
                seconds=self._cooldown.seconds,
                clock=self._clock,
            )
        return breaker

    def _prune(self) -> None:
        """Forget breakers that are closed, with no recent failure and nothing in flight (a
        caller holds a breaker only while its deployment is in flight)."""
        for key in [k for k, b in self._breakers.items() if b.pristine and not self._in_flight.get(k)]:
            del self._breakers[key]
        self._prune_at = max(PRUNE_AT, 2 * len(self._breakers))

    def first_to_reopen(self, plans: list[Plan]) -> tuple[Plan, Deployment]:
        """Of the plans' deployments, the one whose breaker lets a request through soonest
        (the first listed on a tie), with its plan."""
        return min(
            ((plan, d) for plan in plans for d in plan.deployments), key=lambda pd: self.breaker(pd[1]).retry_in()
        )

    def started(self, deployment: Deployment) -> None:
        key = _id(deployment)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def finished(self, deployment: Deployment) -> None:
        key = _id(deployment)
        left = self._in_flight.get(key, 1) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)

    def health(self) -> list[dict[str, Any]]:
        """Every deployment's state in this process (for /admin/health and metrics)."""
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        for plan in self._plans.values():
            for deployment in plan.deployments:
                key = _id(deployment)
                if key in seen:
                    continue
                breaker = self.breaker(deployment)
                seen[key] = {
                    "model": plan.model.name,
                    "backend": deployment.backend_name,
                    "upstream_model": deployment.upstream_model,
                    "weight": deployment.route.weight,
                    "state": breaker.state.value,
                    "retry_in": round(breaker.retry_in(), 3) if breaker.state is State.OPEN else 0.0,
                    "in_flight": self._in_flight.get(key, 0),
                }
        return list(seen.values())


def allowed(principal: Principal, plan: Plan) -> bool:
    """Whether the team and the key may use the plan's model (by any of its names)."""
    return principal.may_use(*plan.names)


def permitted(router: Router, principal: Principal, asked: str) -> list[Plan]:
    """The models that may serve `principal`'s request for `asked`, in order: the model the
    name resolves to and its fallbacks, less those the team or the key may not use (a
    forbidden one is skipped, never served). 403 naming `asked` when none is left, 404
    when nothing takes the name."""
    plans = [plan for plan in router.candidates(asked) if allowed(principal, plan)]
    if not plans:
        raise PermissionDenied(f"team '{principal.team_id}' may not use model '{asked}'")
    return plans


def may_ask(router: Router, principal: Principal, name: str) -> bool:
    """Whether `permitted` would serve a request for `name` (what `/v1/models` lists and
    shows: a team sees exactly what it may ask for)."""
    return any(allowed(principal, plan) for plan in router.candidates(name))


def _id(deployment: Deployment) -> tuple[str, str]:
    return deployment.backend_name, deployment.upstream_model
