"""Processes the bench starts (each in its own process group, always stopped) and what
/proc says about them: CPU time, resident memory, busy cores."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it): 2,000
    idle streams need about 4,000 descriptors in the gateway and as many in the client."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


# ---------------------------------------------------------------------- cores


@dataclass(frozen=True)
class Cores:
    """How the cores are split: the process under test (floor or gateway) alone on
    `under_test`, everything else (upstream, wrk, redis, this script) on `load`."""

    under_test: str | None  # a taskset CPU list, or None: no pinning possible
    load: str | None

    @classmethod
    def split(cls) -> Cores:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2 or shutil.which("taskset") is None:
            return cls(None, None)
        return cls(str(cpus[0]), ",".join(map(str, cpus[1:])))

    def describe(self) -> str:
        if self.under_test is None:
            return "no pinning (fewer than 2 CPUs or no taskset): every process shares the same cores"
        return (
            f"process under test (floor or gateway) on CPU {self.under_test}; "
            f"upstream, wrk, redis and this script on CPU {self.load}"
        )

    def pin_self(self) -> None:
        """Keep this script off the core under test (it mostly sleeps, but not always)."""
        if self.load is not None:
            os.sched_setaffinity(0, {int(cpu) for cpu in self.load.split(",")})


def core_times() -> dict[str, tuple[int, int]]:
    """Per CPU ("cpu0", ...): (busy, total) jiffies from /proc/stat."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            values = [int(v) for v in fields[:8]]
            idle = values[3] + values[4]  # idle + iowait
            times[name] = (sum(values) - idle, sum(values))
    return times


def machine_busy_seconds() -> float:
    """CPU seconds spent by everything on this machine (all cores) since boot."""
    return sum(busy for busy, _ in core_times().values()) / CLOCK_TICKS


def _own_rusage_seconds() -> float:
    """This script's CPU, and that of its children already waited for (wrk runs)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@dataclass
class Usage:
    """CPU used during one measured interval, in seconds."""

    wall: float
    under_test: float  # the process under test and its workers
    load: float  # upstream, redis, wrk and this script
    other: float  # the rest of the machine: other people's processes sharing it (noise)

    def percent(self, seconds: float) -> float:
        """As a percentage of one core."""
        return 100.0 * seconds / self.wall if self.wall else 0.0


class Meter:
    """Reads CPU counters at creation and again at `stop()`: who used how much meanwhile."""

    def __init__(self, under_test: list[int], load: list[int]) -> None:
        self.under_test_pids = under_test
        self.load_pids = load
        self.started = time.monotonic()
        self.under_test = cpu_seconds(under_test)
        self.load = cpu_seconds(load) + _own_rusage_seconds()
        self.machine = machine_busy_seconds()

    def stop(self) -> Usage:
        wall = time.monotonic() - self.started
        under_test = cpu_seconds(self.under_test_pids) - self.under_test
        load = cpu_seconds(self.load_pids) + _own_rusage_seconds() - self.load
        machine = machine_busy_seconds() - self.machine
        return Usage(wall, under_test, load, max(0.0, machine - under_test - load))


# ---------------------------------------------------------------------- /proc readings


def family(pid: int) -> list[int]:
    """`pid` and all its descendants (a supervisor's workers), those alive now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _task_cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU of every thread of `pid` (schedstat: exact, where /proc/PID/stat
    counts in 10 ms ticks, too coarse for a paced run of a few dozen requests)."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
            total += (int(stat[11]) + int(stat[12])) * 1_000_000_000 // CLOCK_TICKS
    return total


def cpu_seconds(pids: list[int]) -> float:
    return sum(_task_cpu_ns(pid) for pid in pids) / 1e9


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_files(pids: list[int]) -> int:
    """Descriptors the processes hold open (sockets included)."""
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return total


def rss_mb(pids: list[int]) -> float:
    """Resident memory now (VmRSS), summed over the processes."""
    return sum(_status_kb(pid, "VmRSS") for pid in pids) / 1024


def peak_rss_mb(pids: list[int]) -> float:
    """Peak resident memory (VmHWM) since start or since `reset_peak_rss`, summed."""
    return sum(_status_kb(pid, "VmHWM") for pid in pids) / 1024


def reset_peak_rss(pids: list[int]) -> None:
    """Start VmHWM again from the current RSS (writing 5 to clear_refs, Linux 4.0+), so each
    run reports its own peak; where refused, the peak is since the process started."""
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


# ---------------------------------------------------------------------- starting and stopping


class Started:
    """One process the bench started, in its own process group (so stopping it stops what it
    started too: a gateway supervisor's workers, taskset's child)."""

    def __init__(self, name: str, process: subprocess.Popen, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def pids(self) -> list[int]:
        return family(self.pid)

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()


class Processes:
    """Starts processes and stops every one of them on exit, also on Ctrl-C or an error:
    use as `with Processes(scratch) as procs:`."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.started: list[Started] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        # A second Ctrl-C while stopping would leave the rest running: hold signals meanwhile.
        held = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.started:
                self.started.pop().stop()
        finally:
            for sig, handler in held.items():
                signal.signal(sig, handler)

    def stop(self, started: Started) -> None:
        started.stop()
        if started in self.started:
            self.started.remove(started)

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        cpus: str | None,
        port: int | None = None,
        ready_text: str | None = None,
        timeout: float = 30.0,
    ) -> Started:
        """Start `argv` pinned to `cpus`, output to a log file, and wait until `port` accepts
        connections and `ready_text` is in the log (either may be None)."""
        if cpus is not None:
            argv = ["taskset", "-c", cpus, *argv]
        log = self.scratch / f"{name}.log"
        with log.open("ab") as out:  # append mode: the log can be truncated while written to
            process = subprocess.Popen(
                argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        started = Started(name, process, log)
        self.started.append(started)
        deadline = time.monotonic() + timeout
        while not _ready(port, ready_text, log):
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{started.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout:g} s:\n{started.tail()}")
            time.sleep(0.05)
        return started

    def python(self, name: str, module_args: list[str], **kwargs) -> Started:
        return self.start(name, [sys.executable, "-m", *module_args], **kwargs)


def _ready(port: int | None, text: str | None, log: Path) -> bool:
    if text is not None and text not in log.read_text(errors="replace"):
        return False
    if port is None:
        return True
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
