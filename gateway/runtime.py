"""What one process serves with: the `Runtime` and the typed keys that carry it.

`Runtime` is the one mutable holder the application owns (there are no module globals).
A reload (SIGHUP, `POST /admin/reload`) checks the new file whole first; a bad one is
refused with its problems and the running configuration stays. A good one builds a new
`Router` and swaps it in one assignment: requests in flight keep the one they took. What
cannot change without a restart (the store, how limits are enforced, the listening
socket) is refused or reported.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from gateway import accounts
from gateway.admission import Admission
from gateway.auth import Authenticator
from gateway.backends import Backend, build_backend
from gateway.backends.http_client import UpstreamClient
from gateway.bearer import FailureThrottle
from gateway.config import Config, ConfigError, exposure_problems, load
from gateway.exchange import Exchange
from gateway.observe.access_log import AccessLog
from gateway.passthrough import Policy, team_policies
from gateway.routing import Router
from gateway.store import Store

log = logging.getLogger("gateway")


@dataclass(frozen=True, slots=True)
class Routes:
    """One configuration as a request sees it: the config, its router and backends, the
    teams' pass-through narrowing. A reload builds a new one and swaps it whole, so a
    request that took one keeps a consistent set until it ends."""

    config: Config
    router: Router
    backends: Mapping[str, Backend]
    # Team id → its narrowing of the native backends' passthrough (teams the file narrows).
    team_passthrough: Mapping[str, Policy]


def build_routes(config: Config, client: UpstreamClient) -> Routes:
    backends = {name: build_backend(name, spec, client) for name, spec in config.backends.items()}
    return Routes(config, Router(config, backends), backends, team_policies(config.teams))


@dataclass(slots=True)
class Runtime:
    """What one process serves with. `routes` is swapped whole on reload; the store, the
    auth cache and admission are set up once, at startup, before any request is served."""

    routes: Routes
    client: UpstreamClient
    # The file the config came from, for reloads (None: built in code, not reloadable).
    config_path: str | None = None
    store: Store | None = None
    auth: Authenticator | None = None
    admission: Admission | None = None
    access_log: AccessLog = field(default_factory=AccessLog)
    # The tasks serving requests now (the edge keeps it): what a shutdown drains.
    in_flight: set[asyncio.Task[object]] = field(default_factory=set)
    # The hosts `gateway serve` listens on (client, admin; None: the config's own), which
    # a reloaded file's secrets must be strong enough for (`config.exposure_problems`).
    listen_hosts: tuple[str | None, str | None] = (None, None)
    # Recent wrong admin and metrics tokens, per source address (gateway/bearer.py).
    operator_failures: FailureThrottle = field(default_factory=FailureThrottle)

    @property
    def config(self) -> Config:
        return self.routes.config

    def serving(self) -> tuple[Authenticator, Admission]:
        """The auth cache and admission, for a request handler (set up at startup)."""
        if self.auth is None or self.admission is None:
            raise RuntimeError("a request reached the gateway before its startup finished")
        return self.auth, self.admission


RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
EXCHANGE: web.RequestKey[Exchange] = web.RequestKey("exchange", Exchange)


# Parts of the config that a running process cannot take over.
_NEEDS_RESTART = ("store", "limits")


async def reload(runtime: Runtime, path: str | Path) -> Config:
    """Load `path` and make it the running configuration; `ConfigError` leaves all as it was."""
    config = load(path)
    problems = [
        f"{part}: changing it needs a restart"
        for part in _NEEDS_RESTART
        if getattr(config, part) != getattr(runtime.config, part)
    ]
    # The new secrets must be strong enough for where this process listens now.
    problems += exposure_problems(config, *runtime.listen_hosts)
    if problems:
        raise ConfigError(problems)
    if config.server != runtime.config.server:
        log.warning(
            "server settings changed in %s; the listening socket and body limit change at the next restart", path
        )
    assert runtime.store is not None and runtime.auth is not None  # set at startup, before any reload
    await accounts.bootstrap(runtime.store, config.teams)
    runtime.auth.forget_unknown()  # a key the file adds works here at once, not after the feed's message
    runtime.routes = build_routes(config, runtime.client)
    log.info("configuration reloaded from %s (%d models, %d backends)", path, len(config.models), len(config.backends))
    return config
