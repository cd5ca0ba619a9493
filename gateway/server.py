"""Running the application: event loop, listening socket, logging."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from gateway.app import build_app
from gateway.config import Config, ConfigError
from gateway.keys import RUNTIME
from gateway.metrics import setup_multiprocess, teardown_multiprocess
from gateway.reload import reload

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


async def _reload_on_sighup(app: web.Application) -> None:
    """SIGHUP reloads the config file; a bad file is logged with its problems and ignored."""
    runtime = app[RUNTIME]

    async def reload_now() -> None:
        try:
            await reload(runtime, runtime.config_path)
        except ConfigError as exc:
            log.error("reload refused; still serving the previous configuration:\n  %s", "\n  ".join(exc.problems))
        except Exception:
            log.exception("reload failed; still serving the previous configuration")

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload_now()))


def serve(
    config: Config, host: str | None = None, port: int | None = None, config_path: str | None = None, workers: int = 1
) -> None:
    """`workers`: how many processes will serve (one today; with more, their metrics are
    kept in files that every process's `/metrics` adds up, set up here before any fork)."""
    host = host or config.server.host
    port = config.server.port if port is None else port
    _install_uvloop()
    multiprocess = setup_multiprocess(workers)
    if multiprocess.directory is not None:
        log.info("metrics: multiprocess mode, values kept in %s", multiprocess.directory)
    app = build_app(config, config_path)
    if config_path is not None:
        app.on_startup.append(_reload_on_sighup)

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
    try:
        web.run_app(app, host=host, port=port, access_log=None, handler_cancellation=True, print=listening)
    finally:
        teardown_multiprocess(multiprocess)
