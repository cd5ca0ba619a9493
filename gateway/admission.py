"""Around one generation request: what it asks of its team's limits, and what it really used.

`demand_for` turns a request into a `Demand` (input estimated, output reserved from
`max_tokens`, cost from the model's pricing); `Admission` holds the tickets in flight,
renews their concurrency leases, and settles each exactly once in the background, so
settlement never delays a response and a client that disconnects still gets settled.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.backends.base import Deployment
from gateway.config import Pricing
from gateway.identity import Principal
from gateway.limiter import Demand, Limiter, MemoryLimiter, Ticket, Usage
from gateway.routing import Plan

log = logging.getLogger(__name__)


def output_reservation(body: dict, plan: Plan, deployment: Deployment) -> int:
    wanted = body.get("max_tokens") or plan.model.default_max_tokens
    cap = deployment.route.max_output_tokens
    return min(wanted, cap) if cap else wanted


def cost(pricing: Pricing | None, *, input: int, output: int, cache_read: int = 0, cache_write: int = 0) -> float:
    if pricing is None:
        return 0.0
    read = pricing.cache_read_per_mtok if pricing.cache_read_per_mtok is not None else pricing.input_per_mtok
    write = pricing.cache_write_per_mtok if pricing.cache_write_per_mtok is not None else pricing.input_per_mtok
    return (input * pricing.input_per_mtok + output * pricing.output_per_mtok + cache_read * read + cache_write * write) / 1e6


def demand_for(principal: Principal, plan: Plan, deployment: Deployment, body: dict, input_tokens: int) -> Demand:
    """`input_tokens`: the request's estimate (`tokens.estimate_input_tokens`), made once by the caller."""
    pricing = plan.model.pricing
    output_tokens = output_reservation(body, plan, deployment)
    input_cost = cost(pricing, input=input_tokens, output=0)
    return Demand(
        team=principal.team,
        key=principal.key,
        model=plan.model.name,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=input_cost + cost(pricing, input=0, output=output_tokens),
        input_cost_usd=input_cost,
    )


def usage_of(messages_usage: dict | None, pricing: Pricing | None) -> Usage:
    """A Messages `usage` object (or None: nothing was generated) as the limiter's `Usage`."""
    if not messages_usage:
        return Usage()
    numbers = {
        name: value if isinstance(value, int) and not isinstance(value, bool) else 0
        for name in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        for value in (messages_usage.get(name),)
    }
    return Usage(
        **numbers,
        cost_usd=cost(
            pricing,
            input=numbers["input_tokens"],
            output=numbers["output_tokens"],
            cache_read=numbers["cache_read_input_tokens"],
            cache_write=numbers["cache_creation_input_tokens"],
        ),
    )


class Admission:
    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self._live: dict[int, Ticket] = {}
        # Settlements asked for in this turn of the event loop: sent together at its end,
        # one task and one write for all of them rather than a task each.
        self._queued: list[tuple[Ticket, Usage]] = []
        self._settling: set[asyncio.Task] = set()

    async def admit(self, demand: Demand) -> Ticket:
        ticket = await self.limiter.admit(demand)
        self._live[id(ticket)] = ticket
        return ticket

    def settle(self, ticket: Ticket, usage: Usage) -> None:
        """Settle in the background, once: the response (or the cancellation) goes on."""
        if self._live.pop(id(ticket), None) is None:
            return
        if isinstance(self.limiter, MemoryLimiter):  # in this process: no task needed
            try:
                self.limiter.settle_now(ticket, usage)
            except Exception:
                log.exception("could not settle team %s's request", ticket.demand.team.id)
            return
        if not self._queued:
            asyncio.get_running_loop().call_soon(self._send_queued)
        self._queued.append((ticket, usage))

    def _send_queued(self) -> None:
        if not self._queued:  # (drain() sent them)
            return
        settlements, self._queued = self._queued, []
        task = asyncio.get_running_loop().create_task(self._settle(settlements))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, settlements: list[tuple[Ticket, Usage]]) -> None:
        try:
            await self.limiter.settle_many(settlements)
        except Exception as exc:
            # The leases run out by themselves; what is lost is usage of these requests.
            teams = sorted({ticket.demand.team.id for ticket, _ in settlements})
            log.warning("could not settle requests of teams %s (%s)", ", ".join(teams), type(exc).__name__)

    async def renew_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if not self._live:
                continue
            try:
                await self.limiter.renew(list(self._live.values()))
            except Exception as exc:
                log.warning("could not renew concurrency leases (%s)", type(exc).__name__)

    async def drain(self) -> None:
        """Wait for settlements under way (at shutdown), and for those asked for meanwhile."""
        while self._queued or self._settling:
            self._send_queued()
            await asyncio.gather(*self._settling, return_exceptions=True)
