"""Starting the pieces: the bench upstream, redis-server, the floor, the gateway."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.processes import ROOT, Cores, Processes, Started, free_port
from bench.targets import gateway_config

GATEWAY_READY = "gateway listening on"


@dataclass
class Service:
    started: Started
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_upstream(procs: Processes, cores: Cores) -> Service:
    port = free_port()
    started = procs.python("upstream", ["bench.upstream", "--port", str(port)], cpus=cores.load, port=port)
    return Service(started, port)


def start_redis(procs: Processes, cores: Cores) -> Service | None:
    """A throwaway redis-server on a free port (never 6379), nothing saved; None if there is
    no redis-server on this machine."""
    if shutil.which("redis-server") is None:
        return None
    port = free_port()
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(procs.scratch),
    ]
    return Service(procs.start("redis", argv, cpus=cores.load, port=port), port)


def redis_url(redis: Service | None) -> str | None:
    return None if redis is None else f"redis://127.0.0.1:{redis.port}/0"


def start_floor(procs: Processes, cores: Cores, upstream: Service) -> Service:
    port = free_port()
    argv = ["bench.floor", "--port", str(port), "--upstream", f"{upstream.base_url}/v1/chat/completions"]
    return Service(procs.python("floor", argv, cpus=cores.under_test, port=port), port)


def start_gateway(
    procs: Processes,
    cores: Cores,
    upstream: Service,
    *,
    name: str,
    redis_url: str | None,
    limited: bool,
    workers: int = 1,
    cpus: str | None = None,
    server: dict | None = None,
) -> Service:
    """`gateway serve` at its default log level (info: the per-request log line is part of
    what production pays), pinned to the core under test unless `cpus` says otherwise;
    `server`: settings of the config's `server:` beyond its address."""
    port = free_port()
    config = procs.scratch / f"{name}.yaml"
    config.write_text(
        gateway_config(port=port, upstream_port=upstream.port, redis_url=redis_url, limited=limited, server=server)
    )
    argv = ["gateway", "serve", "--config", str(config), "--workers", str(workers)]
    started = procs.python(name, argv, cpus=cpus or cores.under_test, port=port, ready_text=GATEWAY_READY)
    return Service(started, port)


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": str(os.cpu_count()),
        "cpus_usable": str(len(os.sched_getaffinity(0))),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "code": code_version(),
    }


def code_version() -> str:
    """The commit measured, and whether gateway/ differs from it (others may be editing)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "gateway")
    return commit + (" + uncommitted changes in gateway/" if dirty else "")
