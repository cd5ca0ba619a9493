"""Running the application: event loop, listening socket, logging."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway.app import build_app
from gateway.config import Config

log = logging.getLogger("gateway")


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    access = logging.getLogger("gateway.access")
    # Access lines are JSON objects on their own, one per line, without the text prefix.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # optional: the gateway runs on the standard loop too
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(config: Config, host: str | None = None, port: int | None = None) -> None:
    host = host or config.server.host
    port = config.server.port if port is None else port
    _install_uvloop()
    app = build_app(config)

    def listening(_: str) -> None:  # called by aiohttp once the socket is bound
        log.info(
            "gateway listening on http://%s:%d (%d models, %d backends, store: %s)",
            host, port, len(config.models), len(config.backends), config.store.type,
        )
        if config.store.type == "memory":
            log.info(
                "the memory store lives in this process only: run one process, or configure "
                "`store: {type: redis, url: ...}` to share keys, revocations and limits"
            )

    # handler_cancellation: a client that disconnects cancels its handler, and with it
    # the upstream request, at once.
    web.run_app(app, host=host, port=port, access_log=None, handler_cancellation=True, print=listening)
