"""Running the application: event loop, listening socket, logging."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from aiohttp import web

from gateway.app import build_app
from gateway.config import Config, ConfigError, ServerConfig, host_port
from gateway.connections import GuardedSite, Listener
from gateway.observe.metrics import METRICS
from gateway.observe.multiprocess import setup_multiprocess, teardown_multiprocess, worker_exited
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


def _socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A bound TCP socket; `reuse_port`: several processes bind the same host:port and the
    kernel spreads new connections over those listening (SO_REUSEPORT)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
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


def _bound(host: str, port: int, *, reuse_port: bool) -> socket.socket:
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
        return Listener(name, server.header_timeout, server.body_timeout, server.keepalive_timeout,
                        server.max_connections, serves)

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
) -> None:
    """Serve until SIGTERM/SIGINT, then drain (`_run`).

    `workers`: None is one per CPU (one with the memory store, which lives in one process);
    1 serves in this process; more starts a supervisor (`_supervise`) that runs that many
    `gateway serve` processes on the same port (and admin port). `admin_listen`: host:port
    of the admin listener, instead of `server.admin_listen`. `ready_fd`: this process is
    one of those workers; it writes to that pipe once it is serving."""
    host = host or config.server.host
    port = config.server.port if port is None else port
    admin_listen = admin_listen or config.server.admin_listen
    admin = host_port(admin_listen) if admin_listen else None
    if admin is not None and admin[1] == port:
        log.error("the admin listener (%s) needs a port of its own, not the client listener's", admin_listen)
        sys.exit(1)
    memory = config.store.type == "memory"
    if workers is None:
        workers = 1 if memory else default_workers()
    if workers > 1 and memory:
        log.error(
            "--workers %d with the memory store: each process would keep its own keys, revocations and "
            "limits, and they would silently diverge. Run --workers 1, or configure "
            "`store: {type: redis, url: ...}` to share them between workers.",
            workers,
        )
        sys.exit(1)
    if workers > 1:
        if config_path is None:
            raise ValueError("several workers need the config file's path (each worker loads it)")
        _supervise(config, (host, port), admin, config_path, workers, log_level)
        return
    _install_uvloop()
    multiprocess = setup_multiprocess(1)
    if multiprocess.directory is not None and ready_fd is None:
        log.info("metrics: multiprocess mode, values kept in %s", multiprocess.directory)
    app = build_app(config, config_path, access_stream=sys.stderr.buffer)
    app[RUNTIME].listen_hosts = (host, admin[0] if admin else None)
    if config_path is not None:
        app.on_startup.append(_reload_on_sighup)
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
            url(host, client_port), len(config.models), len(config.backends), config.store.type,
        )
        if admin is not None:
            log.info("admin listening on %s (/admin, /metrics)", url(admin[0], sockets[1].getsockname()[1]))
        if memory:
            log.info(
                "the memory store lives in this process only: run one process, or configure "
                "`store: {type: redis, url: ...}` to share keys, revocations and limits"
            )

    try:
        with contextlib.ExitStack() as bound:
            reuse_port = ready_fd is not None
            sockets = [(bound.enter_context(_bound(host, port, reuse_port=reuse_port)), client)]
            if admin is not None:
                sockets.append((bound.enter_context(_bound(*admin, reuse_port=reuse_port)), admin_rules))
            asyncio.run(_run(app, sockets, config.server.drain_seconds, listening))
    finally:
        teardown_multiprocess(multiprocess)


async def _run(app: web.Application, sockets: list[tuple[socket.socket, Listener]], drain_seconds: float,
               listening) -> None:
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


# ---------------------------------------------------------------------------- supervisor

_RESTART_BACKOFF = 0.5  # seconds before a dead worker's replacement starts; doubles while they die young
_RESTART_BACKOFF_MAX = 10.0
_YOUNG = 5.0  # a worker that dies sooner than this after starting counts as dying young
_READY_TIMEOUT = 60.0


def _die_with_parent() -> None:  # in the child, before exec: SIGKILL when the supervisor dies
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class _Worker:
    slot: int
    process: subprocess.Popen
    ready: int | None  # the pipe it reports readiness on, until it has
    started: float


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


def _supervise(config: Config, client: tuple[str, int], admin: tuple[str, int] | None, config_path: str,
               workers: int, log_level: str) -> None:
    """Run `workers` worker processes (`gateway serve ... --workers 1`, each binding the
    client host:port, and the admin one if any, with SO_REUSEPORT and running its own
    event loop), replace one that dies, forward SIGHUP (each reloads the file) and, on
    SIGTERM/SIGINT, SIGTERM (each drains). Every worker serves the admin listener too:
    the admin API's state is in the store, and any worker's /metrics adds up all of them."""
    host, port = client
    # Held, never listening: they reserve the ports (and resolve port 0) for the workers.
    holder = _bound(host, port, reuse_port=True)
    port = holder.getsockname()[1]
    admin_holder = None
    admin_args: list[str] = []
    if admin is not None:
        admin_holder = _bound(*admin, reuse_port=True)
        admin = (admin[0], admin_holder.getsockname()[1])
        admin_args = ["--admin-listen", address(*admin)]
    multiprocess = setup_multiprocess(workers)
    if multiprocess.directory is not None:
        log.info("metrics: multiprocess mode, values kept in %s", multiprocess.directory)
    running: dict[int, _Worker] = {}
    stopping = hup = False

    def spawn(slot: int) -> _Worker:
        read, write = os.pipe()
        argv = [
            sys.executable, "-m", "gateway", "serve", "--config", config_path, "--host", host, "--port", str(port),
            "--workers", "1", "--log-level", log_level, "--ready-fd", str(write), *admin_args,
        ]
        try:
            process = subprocess.Popen(argv, pass_fds=(write,), preexec_fn=_die_with_parent)
        finally:
            os.close(write)
        worker = _Worker(slot, process, read, time.monotonic())
        running[slot] = worker
        return worker

    def on_stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    def on_hup(_signum, _frame) -> None:
        nonlocal hup
        hup = True

    def forward_hup() -> None:
        nonlocal hup
        if hup:
            hup = False
            log.info("SIGHUP: reloading the configuration in %d workers", len(running))
            for worker in running.values():
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGHUP)

    def check_ready(timeout: float) -> list[_Worker]:
        """Workers that reported ready (or closed their pipe: died) within `timeout`."""
        waiting = {w.ready: w for w in running.values() if w.ready is not None}
        if not waiting:
            time.sleep(timeout)
            return []
        readable, _, _ = select.select(list(waiting), [], [], timeout)
        answered = []
        for fd in readable:
            worker = waiting[fd]
            ok = os.read(fd, 1) == b"r"
            os.close(fd)
            worker.ready = None
            if ok:
                answered.append(worker)
        return answered

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    failed = False
    try:
        for slot in range(workers):
            spawn(slot)
        deadline = time.monotonic() + _READY_TIMEOUT
        ready = 0
        while ready < workers and not stopping:
            ready += len(check_ready(0.1))
            forward_hup()
            dead = [w for w in running.values() if w.process.poll() is not None]
            if dead or time.monotonic() > deadline:
                for worker in dead:
                    log.error("worker %d exited with %s while starting", worker.process.pid, _describe(worker.process.returncode))
                if not dead:
                    log.error("workers did not start within %gs", _READY_TIMEOUT)
                failed = True
                return
        if not stopping:
            log.info(
                "gateway listening on %s (%d workers, %d models, %d backends, store: %s)",
                url(host, port), workers, len(config.models), len(config.backends), config.store.type,
            )
            if admin is not None:
                log.info("admin listening on %s (/admin, /metrics)", url(*admin))
        backoff = {slot: _RESTART_BACKOFF for slot in range(workers)}
        restart_at: dict[int, float] = {}
        while not stopping:
            for worker in check_ready(0.1):
                log.info("worker %d (pid %d) serving", worker.slot, worker.process.pid)
            forward_hup()
            now = time.monotonic()
            for slot, worker in list(running.items()):
                code = worker.process.poll()
                if code is None:
                    continue
                del running[slot]
                if worker.ready is not None:
                    os.close(worker.ready)
                worker_exited(multiprocess, worker.process.pid)
                young = now - worker.started < _YOUNG
                backoff[slot] = min(backoff[slot] * 2, _RESTART_BACKOFF_MAX) if young else _RESTART_BACKOFF
                restart_at[slot] = now + backoff[slot]
                log.warning(
                    "worker %d (pid %d) exited with %s; restarting it in %.1fs",
                    slot, worker.process.pid, _describe(code), backoff[slot],
                )
            for slot, when in list(restart_at.items()):
                if now >= when and not stopping:
                    del restart_at[slot]
                    replacement = spawn(slot)
                    log.info("worker %d restarted: pid %d", slot, replacement.process.pid)
    finally:
        _stop_workers(running.values(), config.server.drain_seconds, multiprocess)
        holder.close()
        if admin_holder is not None:
            admin_holder.close()
        teardown_multiprocess(multiprocess)
        if failed:
            sys.exit(1)


def _stop_workers(workers, drain_seconds: float, multiprocess) -> None:
    workers = list(workers)
    if workers:
        log.info("stopping %d workers (draining for up to %gs)", len(workers), drain_seconds)
    for worker in workers:
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + drain_seconds + 15.0
    for worker in workers:
        try:
            worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker pid %d did not stop in time; killing it", worker.process.pid)
            worker.process.kill()
            worker.process.wait()
        if worker.ready is not None:
            with contextlib.suppress(OSError):
                os.close(worker.ready)
        worker_exited(multiprocess, worker.process.pid)
