"""Around one generation request: what it asks of its team's limits, and what it really used.

`demand_for` turns a request into a `Demand` (input estimated, output reserved from
`max_tokens`, cost from the model's pricing); `Admission` holds the tickets in flight,
renews their concurrency leases, and settles each exactly once in the background, so
settlement never delays a response and a client that disconnects still gets settled.
`count_demand` is a count_tokens request's: its own bucket, nothing to settle.

The handlers ask for all of it through `Admission.admit_request` and `settle_request`
(and `admit_count`): pricing, the usage an upstream reported as the limiter's `Usage`,
and which model's prices apply (the one that served, maybe a fallback) are decided here.

Neither side trusts a number it did not make: the reservation is bounded by what the
model's routes may be asked for (a client's `max_tokens` of 10^19 would otherwise hold a
team's whole budget while it runs), and every usage figure an upstream reports is
clamped to [0, MAX_TOKEN_COUNT] before it is settled (a negative one would refund a
budget; one past int64 would fail the settlement script half-way, its lease still held).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.config import ModelConfig, Pricing
from gateway.exchange import Exchange
from gateway.identity import Principal
from gateway.limiter import COUNT_TOKENS, Demand, Limiter, LimitExceeded, Ticket, Usage, rate_limit_headers
from gateway.limiter.rules import needs_input_estimate
from gateway.protocols.messages import MessagesRequest
from gateway.protocols.usage import token_count
from gateway.routing import Plan, Router
from gateway.translate.estimate import estimate_input_tokens

log = logging.getLogger(__name__)

# What a request's output is reserved as at most, on a route with no `max_output_tokens`:
# the most any model served through the Messages API writes in one answer today.
UNCAPPED_OUTPUT_RESERVATION = 128_000


def output_reservation(body: MessagesRequest, plan: Plan) -> int:
    """The output tokens admission holds for a request: its `max_tokens` (or the model's
    default), at most what the model's routes send upstream (`max_output_tokens`, or
    UNCAPPED_OUTPUT_RESERVATION for a route without one). Any of them may serve, so the
    largest; settlement then charges what was really written."""
    wanted = body.get("max_tokens") or plan.model.default_max_tokens
    cap = max(d.route.max_output_tokens or UNCAPPED_OUTPUT_RESERVATION for d in plan.deployments)
    return min(wanted, cap)


def cost(
    pricing: Pricing | None,
    *,
    input: int,
    output: int,
    cache_read: int = 0,
    cache_write: int = 0,
    web_searches: int = 0,
) -> float:
    if pricing is None:
        return 0.0
    read = pricing.cache_read_per_mtok if pricing.cache_read_per_mtok is not None else pricing.input_per_mtok
    write = pricing.cache_write_per_mtok if pricing.cache_write_per_mtok is not None else pricing.input_per_mtok
    tokens = input * pricing.input_per_mtok + output * pricing.output_per_mtok + cache_read * read + cache_write * write
    return tokens / 1e6 + web_searches * pricing.web_search_per_thousand / 1000


def demand_for(principal: Principal, plan: Plan, body: MessagesRequest, input_tokens: int) -> Demand:
    """`plan`: the first model that may serve; `input_tokens`: the request's estimate
    (`tokens.estimate_input_tokens`), made once by the caller."""
    pricing = plan.model.pricing
    output_tokens = output_reservation(body, plan)
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


def count_demand(principal: Principal, plan: Plan) -> Demand:
    """A count_tokens request: one unit of its team's and key's `count_tokens_per_minute`
    buckets, and nothing else (never a messages request, never tokens)."""
    return Demand(
        team=principal.team,
        key=principal.key,
        model=plan.model.name,
        input_tokens=0,
        output_tokens=0,
        operation=COUNT_TOKENS,
    )


def usage_of(messages_usage: Mapping[str, Any] | None, pricing: Pricing | None) -> Usage:
    """A Messages `usage` object (or None: nothing was generated) as the limiter's `Usage`,
    each figure clamped (`token_count`) whoever made the object."""
    if not messages_usage:
        return Usage()
    numbers = {
        name: token_count(messages_usage.get(name))
        for name in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    }
    return Usage(
        **numbers,
        cost_usd=cost(
            pricing,
            input=numbers["input_tokens"],
            output=numbers["output_tokens"],
            cache_read=numbers["cache_read_input_tokens"],
            cache_write=numbers["cache_creation_input_tokens"],
            web_searches=web_searches(messages_usage),
        ),
    )


def web_searches(messages_usage: Mapping[str, Any]) -> int:
    """Server-side web searches the answer ran (`usage.server_tool_use`, native backends
    only), charged per search on top of the tokens. Like output, they are settled, not
    reserved: a request's count is known only once it ended."""
    tools = messages_usage.get("server_tool_use")
    return token_count(tools.get("web_search_requests")) if isinstance(tools, dict) else 0


def served_model(router: Router, plans: Sequence[Plan], exchange: Exchange) -> ModelConfig:
    """The configured model that answered (for its prices): one of the request's, or a
    context fallback."""
    for plan in plans:
        if plan.model.name == exchange.served_model:
            return plan.model
    return router.resolve(exchange.served_model or plans[0].model.name).model


@dataclass(frozen=True, slots=True)
class Admitted:
    """A generation request let in: its ticket, and what prices what it used (the models
    that may serve it, and the router that resolves a context fallback's name)."""

    ticket: Ticket
    router: Router
    plans: Sequence[Plan]


class Admission:
    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self._live: dict[int, Ticket] = {}
        # Settlements asked for in this turn of the event loop: sent together at its end,
        # one task and one write for all of them rather than a task each.
        self._queued: list[tuple[Ticket, Usage]] = []
        self._settling: set[asyncio.Task] = set()

    async def admit_request(
        self, principal: Principal, router: Router, plans: Sequence[Plan], body: MessagesRequest, exchange: Exchange
    ) -> Admitted:
        """Admit a generation request for `plans` (`routing.permitted`; the first prices
        the demand), or raise the refusal (`LimitExceeded`, `Overloaded`). The exchange
        gets the input estimate when a limit counts it, the limit that refused, or the
        team's rate-limit headers. Every `Admitted` must reach `settle_request`."""
        try:
            # Made here only when a limit counts it; else later, if a stream's message_start
            # or an answer without usage needs it (a 30–100 KB request takes ~50 µs).
            if needs_input_estimate(principal.team.limits, principal.key.limits):
                exchange.input_estimate = estimate_input_tokens(body)
            ticket = await self.admit(demand_for(principal, plans[0], body, exchange.input_estimate or 0))
        except LimitExceeded as refused:
            exchange.rejected_limit = refused.limit
            raise
        exchange.ratelimit_headers = rate_limit_headers(ticket.windows)
        return Admitted(ticket=ticket, router=router, plans=plans)

    def settle_request(self, admitted: Admitted, exchange: Exchange) -> None:
        """Settle what the request used (`exchange.usage`: nothing when no answer came) at
        the prices of the model that served it, in the background; once, however often
        this is called: an upstream error settles nothing used, a client that left what
        it was sent."""
        pricing = served_model(admitted.router, admitted.plans, exchange).pricing
        self.settle(admitted.ticket, usage_of(exchange.usage, pricing))

    async def admit_count(self, principal: Principal, plan: Plan, exchange: Exchange) -> Ticket:
        """A count_tokens request (`count_demand`): admitted or refused like any, then done
        with (it holds no lease and uses no tokens: there is nothing to renew or settle).
        The exchange gets the limit that refused, or the team's rate-limit headers."""
        try:
            ticket = await self.limiter.admit(count_demand(principal, plan))
        except LimitExceeded as refused:
            exchange.rejected_limit = refused.limit
            raise
        exchange.ratelimit_headers = rate_limit_headers(ticket.windows)
        return ticket

    async def admit(self, demand: Demand) -> Ticket:
        ticket = await self.limiter.admit(demand)
        self._live[id(ticket)] = ticket
        return ticket

    def settle(self, ticket: Ticket, usage: Usage) -> None:
        """Settle in the background, once: the response (or the cancellation) goes on."""
        if self._live.pop(id(ticket), None) is None:
            return
        try:
            if self.limiter.settle_inline(ticket, usage):  # in this process: no task needed
                return
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
