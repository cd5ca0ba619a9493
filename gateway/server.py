"""Running the application: event loop, listening socket, logging."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from gateway.app import build_app
from gateway.config import Config, ConfigError, ServerConfig, host_port
from gateway.connections import GuardedSite, Listener
from gateway.observe.metrics import METRICS
from gateway.observe.multiprocess import setup_multiprocess, teardown_multiprocess
from gateway.routes import admin_listener_serves, client_listener_serves
from gateway.runtime import RUNTIME, reload

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
    """SIGHUP reloads the config file; a bad file is logged with its problems and ignored.
    Without a file (`gateway demo`), SIGHUP is left alone."""
    runtime = app[RUNTIME]
    path = runtime.config_path
    if path is None:
        return

    async def reload_now() -> None:
        try:
            await reload(runtime, path)
        except ConfigError as exc:
            log.error("reload refused; still serving the previous configuration:\n  %s", "\n  ".join(exc.problems))
        except Exception:
            log.exception("reload failed; still serving the previous configuration")

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload_now()))


def _socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A bound TCP socket; `reuse_port`: several processes bind the same host:port and the
    kernel spreads new connections over those listening (SO_REUSEPORT)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def bind_or_exit(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """`_socket`, or exit 1 saying which address could not be had (in use, not this host's)."""
    try:
        return _socket(host, port, reuse_port=reuse_port)
    except OSError as exc:
        log.error("cannot listen on %s: %s", address(host, port), exc.strerror or exc)
        sys.exit(1)


def listeners(server: ServerConfig, *, admin: bool) -> tuple[Listener, Listener]:
    """The client listener's rules and the admin listener's. `admin`: an admin listener is
    open, so each serves only its own paths (gateway/routes.py); else the client listener
    serves every path."""

    def listener(name: str, serves) -> Listener:
        return Listener(
            name, server.header_timeout, server.body_timeout, server.keepalive_timeout, server.max_connections, serves
        )

    return listener("client", client_listener_serves if admin else None), listener("admin", admin_listener_serves)


def address(host: str, port: int) -> str:
    """host:port, an IPv6 address in brackets (as `server.admin_listen` takes it)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def url(host: str, port: int) -> str:
    return f"http://{address(host, port)}"


def default_workers() -> int:
    """One worker per CPU this process may run on (its affinity, not the machine's cores)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Companion:
    """Another application served by this process, in its loop, on a socket of its own
    (`gateway demo`: the scripted upstream). It starts before the gateway listens and
    stops after the gateway drained, so requests in flight can still reach it."""

    app: web.Application
    sock: socket.socket


def serve(
    config: Config,
    host: str | None = None,
    port: int | None = None,
    config_path: str | None = None,
    workers: int | None = None,
    *,
    admin_listen: str | None = None,
    ready_fd: int | None = None,
    log_level: str = "info",
    companion: Companion | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain (`_run`).

    `workers`: None is one per CPU (one with the memory store, which lives in one process);
    1 serves in this process; more starts a supervisor (gateway/supervisor.py) that runs
    that many `gateway serve` processes on the same port (and admin port). `admin_listen`:
    host:port of the admin listener, instead of `server.admin_listen`. `ready_fd`: this
    process is one of those workers; it writes to that pipe once it is serving.
    `companion`: served alongside, in this process (one worker only). `announce`: called
    with the client listener's URL once it listens."""
    host = host or config.server.host
    port = config.server.port if port is None else port
    admin_listen = admin_listen or config.server.admin_listen
    admin = host_port(admin_listen) if admin_listen else None
    if admin is not None and admin[1] == port:
        log.error("the admin listener (%s) needs a port of its own, not the client listener's", admin_listen)
        sys.exit(1)
    workers = _workers(config, workers)
    if workers > 1:
        if config_path is None:
            raise ValueError("several workers need the config file's path (each worker loads it)")
        from gateway.supervisor import Supervisor  # imported here: it binds with this module's helpers

        Supervisor(config, (host, port), admin, config_path, workers, log_level).run()
        return
    _serve_here(config, (host, port), admin, config_path, ready_fd, companion, announce)


def _workers(config: Config, asked: int | None) -> int:
    """How many processes serve: `asked`, or its default; exit 1 when the store cannot be
    shared by that many."""
    memory = config.store.type == "memory"
    workers = (1 if memory else default_workers()) if asked is None else asked
    if workers > 1 and memory:
        log.error(
            "--workers %d with the memory store: each process would keep its own keys, revocations and "
            "limits, and they would silently diverge. Run --workers 1, or configure "
            "`store: {type: redis, url: ...}` to share them between workers.",
            workers,
        )
        sys.exit(1)
    return workers


def _serve_here(
    config: Config,
    client_address: tuple[str, int],
    admin: tuple[str, int] | None,
    config_path: str | None,
    ready_fd: int | None,
    companion: Companion | None,
    announce: Callable[[str], None] | None,
) -> None:
    """Serve in this process: one event loop, the client listener and the admin one."""
    host, port = client_address
    memory = config.store.type == "memory"
    _install_uvloop()
    multiprocess = setup_multiprocess(1)
    if multiprocess.directory is not None and ready_fd is None:
        log.info("metrics: multiprocess mode, values kept in %s", multiprocess.directory)
    app = build_app(config, config_path, access_stream=sys.stderr.buffer)
    app[RUNTIME].listen_hosts = (host, admin[0] if admin else None)
    app.on_startup.append(_reload_on_sighup)
    if companion is not None:
        app.cleanup_ctx.append(_serving(companion))
    client, admin_rules = listeners(config.server, admin=admin is not None)

    def listening(sockets: list[socket.socket]) -> None:
        client_port = sockets[0].getsockname()[1]
        if ready_fd is not None:  # a worker: the supervisor says when all of them listen
            log.info("worker %d serving on %s", os.getpid(), url(host, client_port))
            with contextlib.suppress(OSError):
                os.write(ready_fd, b"r")
                os.close(ready_fd)
            return
        log.info(
            "gateway listening on %s (%d models, %d backends, store: %s)",
            url(host, client_port),
            len(config.models),
            len(config.backends),
            config.store.type,
        )
        if admin is not None:
            log.info("admin listening on %s (/admin, /metrics)", url(admin[0], sockets[1].getsockname()[1]))
        if memory:
            log.info(
                "the memory store lives in this process only: run one process, or configure "
                "`store: {type: redis, url: ...}` to share keys, revocations and limits"
            )
        if announce is not None:
            announce(url(host, client_port))

    try:
        with contextlib.ExitStack() as bound:
            reuse_port = ready_fd is not None
            sockets = [(bound.enter_context(bind_or_exit(host, port, reuse_port=reuse_port)), client)]
            if admin is not None:
                sockets.append((bound.enter_context(bind_or_exit(*admin, reuse_port=reuse_port)), admin_rules))
            asyncio.run(_run(app, sockets, config.server.drain_seconds, listening))
    finally:
        teardown_multiprocess(multiprocess)


def _serving(companion: Companion) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context of the gateway's app that serves `companion` for the app's lifetime."""

    async def context(_app: web.Application) -> AsyncIterator[None]:
        runner = web.AppRunner(companion.app, handle_signals=False, access_log=None, handler_cancellation=True)
        await runner.setup()
        try:
            await web.SockSite(runner, companion.sock).start()
            yield
        finally:
            await runner.cleanup()

    return context


async def _run(
    app: web.Application, sockets: list[tuple[socket.socket, Listener]], drain_seconds: float, listening
) -> None:
    """Serve `app` on `sockets` (the client listener's first) until SIGTERM or SIGINT;
    then stop accepting (the listening sockets close, so new connections are refused), let
    requests and streams in flight finish for up to `drain_seconds`, cancel what is left
    (a stream then ends with an `error` event, gateway/streaming.py) and clean up."""
    loop = asyncio.get_running_loop()
    in_flight = app[RUNTIME].in_flight  # kept by the edge middleware
    # handler_cancellation: a client that disconnects cancels its handler, and with it
    # the upstream request, at once. shutdown_timeout: what cleanup still waits for once
    # the handlers are done (the last bytes of answers already returned).
    runner = web.AppRunner(app, handle_signals=False, access_log=None, handler_cancellation=True, shutdown_timeout=2.0)
    await runner.setup()
    try:
        events = app[METRICS].connections
        sites = [GuardedSite(runner, sock, listener, events) for sock, listener in sockets]
        for site in sites:
            await site.start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        listening([sock for sock, _ in sockets])
        await stop.wait()
        for site in sites:
            await site.stop()
        busy = {task for task in in_flight if not task.done()}
        log.info("stopping: no new connections; draining %d request(s) for up to %gs", len(busy), drain_seconds)
        if busy:
            _, pending = await asyncio.wait(busy, timeout=drain_seconds)
            if pending:
                log.warning("drain deadline reached: cancelling %d request(s)", len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=5.0)
    finally:
        await runner.cleanup()
    log.info("stopped")
