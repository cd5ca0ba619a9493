"""`gateway serve --workers N`: a supervisor process and N worker processes on one port.

Each worker is `gateway serve ... --workers 1` (gateway/server.py), binding the client
host:port (and the admin one, if any) with SO_REUSEPORT and running its own event loop;
the kernel spreads new connections over them. The supervisor serves nothing itself: it
starts the workers, replaces one that dies (with a backoff while they die young),
forwards SIGHUP (each worker reloads the file) and, on SIGTERM/SIGINT, sends SIGTERM
(each drains) and waits for them. Every worker serves the admin listener too: the admin
API's state is in the store, and any worker's /metrics adds up all of them
(gateway/observe/multiprocess.py).
"""

from __future__ import annotations

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
from types import FrameType

from gateway.config import Config
from gateway.observe.multiprocess import Multiprocess, setup_multiprocess, teardown_multiprocess, worker_exited
from gateway.server import address, bind_or_exit, url

log = logging.getLogger("gateway")

RESTART_BACKOFF = 0.5  # seconds before a dead worker's replacement starts; doubles while they die young
RESTART_BACKOFF_MAX = 10.0
YOUNG = 5.0  # a worker that dies sooner than this after starting counts as dying young
READY_TIMEOUT = 60.0
_TICK = 0.1  # seconds between two looks at the workers (readiness, exits, signals)


def _die_with_parent() -> None:  # in the child, before exec: SIGKILL when the supervisor dies
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def describe(code: int) -> str:
    """A worker's exit: `signal SIGKILL` or `status 1`."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


@dataclass
class Worker:
    slot: int  # its place among the N; a replacement takes the dead one's slot
    process: subprocess.Popen[bytes]
    ready: int | None  # the pipe it reports readiness on, until it has
    started: float


class Supervisor:
    """Runs `workers` workers on `client` (and `admin`) until SIGTERM/SIGINT (`run`)."""

    def __init__(
        self,
        config: Config,
        client: tuple[str, int],
        admin: tuple[str, int] | None,
        config_path: str,
        workers: int,
        log_level: str,
    ) -> None:
        self.config = config
        self.host = client[0]
        self.admin = admin
        self.config_path = config_path
        self.workers = workers
        self.log_level = log_level
        # Held, never listening: they reserve the ports (and resolve port 0) for the workers.
        self.holders: list[socket.socket] = []
        self.port = client[1]
        self.running: dict[int, Worker] = {}
        self.backoff = {slot: RESTART_BACKOFF for slot in range(workers)}
        self.restart_at: dict[int, float] = {}
        self.stopping = False
        self.hup = False  # SIGHUP arrived; forwarded from the loop, not from the handler

    def run(self) -> None:
        """Start the workers, watch them until SIGTERM/SIGINT, then stop them; exit 1 when
        they could not start."""
        self._hold_ports()
        multiprocess = setup_multiprocess(self.workers)
        if multiprocess.directory is not None:
            log.info("metrics: multiprocess mode, values kept in %s", multiprocess.directory)
        self._install_signal_handlers()
        started = False
        try:
            for slot in range(self.workers):
                self._spawn(slot)
            started = self._wait_until_ready()
            if started:
                self._announce()
                self._watch(multiprocess)
        finally:
            self._stop_workers(multiprocess)
            for holder in self.holders:
                holder.close()
            teardown_multiprocess(multiprocess)
        if not started:
            sys.exit(1)

    # ------------------------------------------------------------------ starting

    def _hold_ports(self) -> None:
        client = bind_or_exit(self.host, self.port, reuse_port=True)
        self.holders.append(client)
        self.port = client.getsockname()[1]
        if self.admin is not None:
            admin = bind_or_exit(*self.admin, reuse_port=True)
            self.holders.append(admin)
            self.admin = (self.admin[0], admin.getsockname()[1])

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, _signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self.hup = True

    def _argv(self, ready_fd: int) -> list[str]:
        admin = ["--admin-listen", address(*self.admin)] if self.admin is not None else []
        return [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            self.config_path,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--log-level",
            self.log_level,
            "--ready-fd",
            str(ready_fd),
            *admin,
        ]

    def _spawn(self, slot: int) -> Worker:
        read, write = os.pipe()
        try:
            process = subprocess.Popen(self._argv(write), pass_fds=(write,), preexec_fn=_die_with_parent)
        finally:
            os.close(write)
        worker = Worker(slot, process, read, time.monotonic())
        self.running[slot] = worker
        return worker

    def _wait_until_ready(self) -> bool:
        """Every worker reported ready (True), or one died or they took too long (False,
        said in the log). A stop asked for meanwhile also ends the wait (True)."""
        deadline = time.monotonic() + READY_TIMEOUT
        ready = 0
        while ready < self.workers and not self.stopping:
            ready += len(self._check_ready(_TICK))
            self._forward_hup()
            dead = [w for w in self.running.values() if w.process.poll() is not None]
            for worker in dead:
                log.error(
                    "worker %d exited with %s while starting", worker.process.pid, describe(worker.process.returncode)
                )
            if dead:
                return False
            if time.monotonic() > deadline:
                log.error("workers did not start within %gs", READY_TIMEOUT)
                return False
        return True

    def _announce(self) -> None:
        if self.stopping:
            return
        config = self.config
        log.info(
            "gateway listening on %s (%d workers, %d models, %d backends, store: %s)",
            url(self.host, self.port),
            self.workers,
            len(config.models),
            len(config.backends),
            config.store.type,
        )
        if self.admin is not None:
            log.info("admin listening on %s (/admin, /metrics)", url(*self.admin))

    # ------------------------------------------------------------------ watching

    def _watch(self, multiprocess: Multiprocess) -> None:
        """Until SIGTERM/SIGINT: log workers that became ready, forward SIGHUP, replace
        the dead."""
        while not self.stopping:
            for worker in self._check_ready(_TICK):
                log.info("worker %d (pid %d) serving", worker.slot, worker.process.pid)
            self._forward_hup()
            now = time.monotonic()
            self._reap(now, multiprocess)
            self._restart_due(now)

    def _check_ready(self, timeout: float) -> list[Worker]:
        """Workers that reported ready (or closed their pipe: died) within `timeout`."""
        waiting = {w.ready: w for w in self.running.values() if w.ready is not None}
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

    def _forward_hup(self) -> None:
        if not self.hup:
            return
        self.hup = False
        log.info("SIGHUP: reloading the configuration in %d workers", len(self.running))
        for worker in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGHUP)

    def _reap(self, now: float, multiprocess: Multiprocess) -> None:
        """Forget the workers that exited and schedule their replacements."""
        for slot, worker in list(self.running.items()):
            code = worker.process.poll()
            if code is None:
                continue
            del self.running[slot]
            if worker.ready is not None:
                os.close(worker.ready)
            worker_exited(multiprocess, worker.process.pid)
            young = now - worker.started < YOUNG
            self.backoff[slot] = min(self.backoff[slot] * 2, RESTART_BACKOFF_MAX) if young else RESTART_BACKOFF
            self.restart_at[slot] = now + self.backoff[slot]
            log.warning(
                "worker %d (pid %d) exited with %s; restarting it in %.1fs",
                slot,
                worker.process.pid,
                describe(code),
                self.backoff[slot],
            )

    def _restart_due(self, now: float) -> None:
        for slot, when in list(self.restart_at.items()):
            if now >= when and not self.stopping:
                del self.restart_at[slot]
                replacement = self._spawn(slot)
                log.info("worker %d restarted: pid %d", slot, replacement.process.pid)

    # ------------------------------------------------------------------ stopping

    def _stop_workers(self, multiprocess: Multiprocess) -> None:
        """SIGTERM to every worker (each drains), then wait for them: past the drain
        deadline and a margin, kill the ones still running."""
        workers = list(self.running.values())
        drain_seconds = self.config.server.drain_seconds
        if workers:
            log.info("stopping %d workers (draining for up to %gs)", len(workers), drain_seconds)
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + drain_seconds + 15.0
        for worker in workers:
            _wait_or_kill(worker, deadline)
            worker_exited(multiprocess, worker.process.pid)


def _wait_or_kill(worker: Worker, deadline: float) -> None:
    try:
        worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        log.error("worker pid %d did not stop in time; killing it", worker.process.pid)
        worker.process.kill()
        worker.process.wait()
    if worker.ready is not None:
        with contextlib.suppress(OSError):
            os.close(worker.ready)
