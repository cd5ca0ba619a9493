"""Metrics across worker processes: prometheus-client's multiprocess mode.

With several worker processes, every value lives in memory-mapped files under
`PROMETHEUS_MULTIPROC_DIR` and `/metrics` adds up all of them (`setup_multiprocess`,
called by `gateway serve` before anything is built). Collectors that read this process's
state at scrape time (deployment cooldowns, build info) report the process that answers
the scrape.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import MutableMapping
from dataclasses import dataclass

from prometheus_client import values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from gateway.observe.names import MULTIPROC_ENV


class FilesCollector(MultiProcessCollector):
    """prometheus-client's multiprocess collector, safe to run while another process
    starts: a worker creates its file empty and sizes it a moment later (and a process
    marked dead has its live gauges' files removed), and the stock collector fails the
    whole scrape, or the start of the worker registering it, on such a file."""

    def describe(self) -> list:
        return []  # registering need not read every process's files (the registry would collect)

    def collect(self):  # type: ignore[no-untyped-def]
        files = []
        for path in glob.glob(os.path.join(self._path, "*.db")):
            try:
                if os.path.getsize(path) >= 8:  # the used-bytes header and its padding
                    files.append(path)
            except OSError:  # removed meanwhile
                continue
        try:
            return self.merge(files, accumulate=True)
        except FileNotFoundError:  # removed between the look and the read: the next scrape has it right
            return self.merge([f for f in files if os.path.exists(f)], accumulate=True)


def use_mmap_values() -> None:
    """prometheus-client picks where values live when it is imported, from the
    environment; a directory chosen later (by `gateway serve`) must switch it, before
    any metric is made."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()


@dataclass(frozen=True, slots=True)
class Multiprocess:
    """How this server keeps its metrics (`setup_multiprocess`)."""

    directory: str | None  # None: in this process's memory
    owned: bool = False  # created for this server: removed when it stops
    shared: bool = False  # the operator's: other processes may be using it


def setup_multiprocess(workers: int, environ: MutableMapping[str, str] | None = None) -> Multiprocess:
    """Before the app is built (and before workers fork): where metric values will live.

    - More than one worker: `$PROMETHEUS_MULTIPROC_DIR`, or a new temporary directory
      (then set in the environment the workers inherit); emptied now, since files left
      by an earlier run would add dead processes' counts to this one's.
    - One process, `$PROMETHEUS_MULTIPROC_DIR` set: the operator runs several `gateway
      serve` processes on one directory; it is used as it is (the operator empties it
      before starting them all).
    - Otherwise: this process's memory.
    """
    environ = os.environ if environ is None else environ
    directory = environ.get(MULTIPROC_ENV) or None
    if workers <= 1:
        if directory is None:
            return Multiprocess(None)
        os.makedirs(directory, exist_ok=True)
        use_mmap_values()
        return Multiprocess(directory, shared=True)
    owned = directory is None
    if directory is None:
        directory = tempfile.mkdtemp(prefix="gateway-metrics-")
        environ[MULTIPROC_ENV] = directory
    else:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))
    use_mmap_values()
    return Multiprocess(directory, owned=owned)


def worker_exited(setup: Multiprocess, pid: int) -> None:
    """A worker process is gone: its live gauges (in flight, open streams) stop counting.
    Its counters and histograms stay, so totals never go down."""
    if setup.directory is not None:
        with contextlib.suppress(OSError):
            mark_process_dead(pid, setup.directory)


def teardown_multiprocess(setup: Multiprocess) -> None:
    """When the server stops: this process's live gauges go; a directory it made goes."""
    if setup.directory is None:
        return
    worker_exited(setup, os.getpid())
    if setup.owned:
        shutil.rmtree(setup.directory, ignore_errors=True)
