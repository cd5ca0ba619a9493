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


@dataclass(slots=True)
class Runtime:
    config: Config
    # The file the config came from, for reloads (None: built in code, not reloadable).
    config_path: str | None = None
    router: Router | None = None
    client: UpstreamClient | None = None
    backends: dict[str, Backend] = field(default_factory=dict)
    store: Store | None = None
    auth: Authenticator | None = None
    admission: Admission | None = None
    access_log: AccessLog = field(default_factory=AccessLog)
    # The tasks serving requests now (the edge keeps it): what a shutdown drains.
    in_flight: set[asyncio.Task] = field(default_factory=set)
    # The hosts `gateway serve` listens on (client, admin; None: the config's own), which
    # a reloaded file's secrets must be strong enough for (`config.exposure_problems`).
    listen_hosts: tuple[str | None, str | None] = (None, None)
    # Recent wrong admin and metrics tokens, per source address (gateway/bearer.py).
    operator_failures: FailureThrottle = field(default_factory=FailureThrottle)
    # Team id → its narrowing of the native backends' passthrough (teams the file narrows).
    team_passthrough: dict[str, Policy] = field(default_factory=dict)

    def build_router(self, config: Config) -> Router:
        assert self.client is not None
        backends = {name: build_backend(name, spec, self.client) for name, spec in config.backends.items()}
        router = Router(config, backends)
        self.config, self.backends, self.router = config, backends, router
        self.team_passthrough = team_policies(config.teams)
        return router


RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
EXCHANGE: web.RequestKey[Exchange] = web.RequestKey("exchange", Exchange)


# Parts of the config that a running process cannot take over.
_NEEDS_RESTART = ("store", "limits")


async def reload(runtime: Runtime, path: str | Path) -> Config:
    """Load `path` and make it the running configuration; `ConfigError` leaves all as it was."""
    config = load(path)
    problems = [
        f"{part}: changing it needs a restart" for part in _NEEDS_RESTART if getattr(config, part) != getattr(runtime.config, part)
    ]
    # The new secrets must be strong enough for where this process listens now.
    problems += exposure_problems(config, *runtime.listen_hosts)
    if problems:
        raise ConfigError(problems)
    if config.server != runtime.config.server:
        log.warning("server settings changed in %s; the listening socket and body limit change at the next restart", path)
    await accounts.bootstrap(runtime.store, config.teams)
    runtime.auth.forget_unknown()  # a key the file adds works here at once, not after the feed's message
    runtime.build_router(config)
    log.info("configuration reloaded from %s (%d models, %d backends)", path, len(config.models), len(config.backends))
    return config
