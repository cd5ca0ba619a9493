"""Reloading the configuration while serving (SIGHUP, `POST /admin/reload`).

The new file is checked whole first; a bad one is refused with its problems and the
running configuration stays. A good one swaps the routes in one assignment: requests in
flight keep the router they started with. What cannot change without a restart (the
store, how limits are enforced, the listening socket) is refused or reported.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gateway import accounts
from gateway.config import Config, ConfigError, exposure_problems, load

log = logging.getLogger("gateway")

# Parts of the config that a running process cannot take over.
_NEEDS_RESTART = ("store", "limits")


async def reload(runtime, path: str | Path) -> Config:  # runtime: gateway.app.Runtime
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
