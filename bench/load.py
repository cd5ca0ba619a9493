"""Running the load generator: Debian's wrk with bench/wrk/post.lua, or the aiohttp
fallback (bench/driver.py) where wrk is missing. Both print one `BENCH_JSON {...}` line."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.processes import ROOT
from bench.targets import Request

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk" / "post.lua"
MARKER = "BENCH_JSON "
STOPPED = "BENCH_STOPPED"


@dataclass
class LoadResult:
    requests: int
    seconds: float
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @classmethod
    def parse(cls, output: str) -> LoadResult:
        for line in output.splitlines():
            if line.startswith(MARKER):
                data = orjson.loads(line[len(MARKER) :])
                latency = data["latency_us"]
                return cls(
                    data["requests"],
                    data["duration_us"] / 1e6,
                    data["errors"],
                    latency["p50"] / 1000,
                    latency["p99"] / 1000,
                )
        raise RuntimeError(f"the load generator printed no result:\n{output[-2000:]}")


class LoadGenerator:
    """Builds and runs load commands, pinned to the load cores."""

    def __init__(self, scratch: Path, cpus: str | None, *, force_fallback: bool = False) -> None:
        self.scratch = scratch
        self.cpus = cpus
        self.wrk = None if force_fallback else shutil.which("wrk")
        self._bodies = itertools.count()

    @property
    def name(self) -> str:
        return "wrk (-t1, bench/wrk/post.lua)" if self.wrk else "aiohttp fallback (bench/driver.py): wrk not found"

    def _command(self, request: Request, connections: int, seconds: int, max_requests: int | None):
        body_file = self.scratch / f"body-{next(self._bodies)}.json"
        body_file.write_bytes(request.body)
        headers = "\n".join(f"{name}: {value}" for name, value in request.headers.items())
        env = dict(os.environ)
        if self.wrk:
            env.update(BENCH_BODY_FILE=str(body_file), BENCH_HEADERS=headers)
            if max_requests is not None:
                env["BENCH_MAX_REQUESTS"] = str(max_requests)
            # One wrk thread: it stays on one core, and the connections are all its own.
            argv = [
                self.wrk,
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "30s",
                "-s",
                str(LUA_SCRIPT),
                request.url,
            ]
        else:
            argv = [
                sys.executable,
                "-m",
                "bench.driver",
                "--url",
                request.url,
                "--body-file",
                str(body_file),
                "--connections",
                str(connections),
                "--seconds",
                str(seconds),
            ]
            argv += [arg for name, value in request.headers.items() for arg in ("--header", f"{name}: {value}")]
            if max_requests is not None:
                argv += ["--max-requests", str(max_requests)]
        if self.cpus is not None:
            argv = ["taskset", "-c", self.cpus, *argv]
        return argv, env

    def run(self, request: Request, connections: int, seconds: int) -> LoadResult:
        """`connections` connections for `seconds` (whole seconds: wrk's -d takes no less)."""
        argv, env = self._command(request, connections, seconds, None)
        done = subprocess.run(
            argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        return LoadResult.parse(done.stdout + done.stderr)

    def run_count(
        self, request: Request, connections: int, count: int, max_seconds: int, every: float, sample: Callable[[], None]
    ) -> LoadResult:
        """Send `count` requests (or stop after `max_seconds`), calling `sample()` every
        `every` seconds meanwhile."""
        argv, env = self._command(request, connections, max_seconds, count)
        process = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        lines: list[str] = []
        reader = threading.Thread(target=_read_lines, args=(process, lines), daemon=True)
        reader.start()
        try:
            next_sample = time.monotonic() + every
            while process.poll() is None:
                time.sleep(0.1)
                if time.monotonic() >= next_sample:
                    sample()
                    next_sample += every
            reader.join(5)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return LoadResult.parse("".join(lines))


def _read_lines(process: subprocess.Popen, lines: list[str]) -> None:
    """Collect the output; at wrk's STOPPED marker, end its -d sleep with SIGINT (it then
    prints its summary and exits)."""
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if line.startswith(STOPPED):
            process.send_signal(signal.SIGINT)
