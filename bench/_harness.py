"""What the benchmarks share: processes on free ports, a load driver, CPU accounting."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
BENCH_KEY = {"x-api-key": "gk-bench-key-0001"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def start(args: list[str], ready: str, core: int | None, log: Path) -> asyncio.subprocess.Process:
    """Start `gateway ARGS` with its output going to `log` (a pipe nobody drains would stall
    it), and wait for `ready` to appear there."""
    command = [sys.executable, "-m", "gateway", *args]
    if core is not None and shutil.which("taskset"):
        command = ["taskset", "-c", str(core), *command]
    with log.open("w") as out:
        process = await asyncio.create_subprocess_exec(*command, cwd=ROOT, stdout=out, stderr=asyncio.subprocess.STDOUT)
    for _ in range(200):
        if ready in log.read_text():
            return process
        await asyncio.sleep(0.1)
    raise RuntimeError(f"gateway {args[0]} did not start: {log.read_text()[-2000:]}")


async def drive(url: str, body: dict, *, concurrency: int, seconds: float, headers: dict | None = None) -> dict:
    ttfb: list[float] = []
    events = 0
    streams = 0
    stop = time.perf_counter() + seconds

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal events, streams
        while time.perf_counter() < stop:
            started = time.perf_counter()
            async with http.post(url, json=body, headers=headers) as response:
                first = True
                async for chunk in response.content.iter_any():
                    if first:
                        ttfb.append(time.perf_counter() - started)
                        first = False
                    events += chunk.count(b"\n\n")
            streams += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        began = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    ttfb.sort()
    return {
        "streams_per_s": streams / elapsed,
        "events_per_s": events / elapsed,
        "ttfb_p50_ms": statistics.median(ttfb) * 1000,
        "ttfb_p99_ms": ttfb[int(len(ttfb) * 0.99) - 1] * 1000 if len(ttfb) > 1 else ttfb[0] * 1000,
        "streams": streams,
    }


