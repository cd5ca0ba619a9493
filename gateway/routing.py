"""Model name → the deployments that serve it.

Built once per configuration (a reload builds a new `Router` and swaps it whole, so a
request keeps the routes it started with).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.backends import Backend, Deployment
from gateway.config import Config, ModelConfig
from gateway.errors import NotFound


@dataclass(frozen=True, slots=True)
class Plan:
    """What to try for one request, in order."""

    model: ModelConfig
    deployments: tuple[Deployment, ...]

    @property
    def primary(self) -> Deployment:
        return self.deployments[0]


class Router:
    def __init__(self, config: Config, backends: Mapping[str, Backend]) -> None:
        self._plans: dict[str, Plan] = {}
        for model in config.models:
            deployments = tuple(
                Deployment(
                    backend=backends[route.backend],
                    upstream_model=route.model,
                    route=route,
                    default_max_tokens=model.default_max_tokens,
                )
                for route in model.routes
            )
            plan = Plan(model=model, deployments=deployments)
            for name in (model.name, *model.aliases):
                self._plans[name] = plan

    def resolve(self, name: str) -> Plan:
        plan = self._plans.get(name)
        if plan is None:
            raise NotFound(f"model: {name}")
        return plan

    def names(self) -> list[str]:
        """Every name a client may ask for: models first, each followed by its aliases."""
        return list(self._plans)
