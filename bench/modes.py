"""The other modes of `python -m bench`: soak (RSS over a fixed number of requests), idle
(RSS with thousands of open streams) and scale (throughput with more workers)."""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import asdict, dataclass

import aiohttp

from bench.load import LoadGenerator
from bench.matrix import Row, make_row, table
from bench.processes import Cores, Meter, Processes, cpu_seconds, open_files, peak_rss_mb, reset_peak_rss, rss_mb
from bench.stack import Service, redis_url, start_floor, start_gateway, start_redis, start_upstream
from bench.targets import BENCH_KEY, IDLE, SCENARIOS, chat_request, messages_request

NONSTREAM = SCENARIOS["nonstream"]
FLAT_MB = 5.0  # "stays flat": RSS after a soak no more than this above RSS before it
LOG_TRUNCATE_BYTES = 64 * 1024 * 1024  # the gateway logs a line per request: a soak writes gigabytes


# ---------------------------------------------------------------------- soak


def soak(args: argparse.Namespace, procs: Processes, cores: Cores, load: LoadGenerator) -> tuple[str, dict]:
    upstream = start_upstream(procs, cores)
    gateway = start_gateway(procs, cores, upstream, name="gateway-memory", redis_url=None, limited=False)
    request = messages_request(gateway.base_url, NONSTREAM, BENCH_KEY)
    started_rss = rss_mb(gateway.started.pids())
    load.run(request, args.connections, 2)  # warm-up: pools, caches, first allocations
    samples: list[tuple[float, float]] = []
    began = time.monotonic()

    def sample() -> None:
        samples.append((time.monotonic() - began, rss_mb(gateway.started.pids())))
        print(f"  {samples[-1][0]:7.1f} s  RSS {samples[-1][1]:.2f} MB", flush=True)
        if gateway.started.log.stat().st_size > LOG_TRUNCATE_BYTES:
            gateway.started.log.write_bytes(b"")  # opened for appending: the gateway writes on at the new end

    sample()
    print(
        f"  sending {args.requests} requests, {args.connections} connections, at most {args.max_seconds} s", flush=True
    )
    cpu_before = cpu_seconds(gateway.started.pids())
    result = load.run_count(request, args.connections, args.requests, args.max_seconds, args.every, sample)
    cpu = cpu_seconds(gateway.started.pids()) - cpu_before
    sample()
    time.sleep(2.0)  # let in-flight work and timers finish before the last reading
    sample()
    pids = gateway.started.pids()
    before, after = samples[0][1], samples[-1][1]
    data = {
        "requests": result.requests,
        "seconds": result.seconds,
        "per_second": result.per_second,
        "errors": result.errors,
        "cpu_us": cpu / max(result.requests, 1) * 1e6,
        "rss_at_start_mb": started_rss,
        "rss_before_mb": before,
        "rss_after_mb": after,
        "peak_rss_mb": peak_rss_mb(pids),
        "samples": [{"seconds": s, "rss_mb": r} for s, r in samples],
    }
    lines = [
        "| seconds | RSS MB |",
        "|---:|---:|",
        *(f"| {s:.1f} | {r:.2f} |" for s, r in samples),
        "",
        f"{result.requests} requests in {result.seconds:.1f} s ({result.per_second:.0f} req/s, "
        f"{data['cpu_us']:.0f} µs CPU each), errors {result.error_count}",
        f"RSS at start {started_rss:.1f} MB, after warm-up {before:.1f} MB, after the soak {after:.1f} MB "
        f"(growth {after - before:+.1f} MB), peak {data['peak_rss_mb']:.1f} MB",
        _mark(after - before < FLAT_MB) + f"  RSS flat over {result.requests} requests "
        f"(growth < {FLAT_MB:g} MB): {after - before:+.1f} MB",
        _mark(before < 80) + f"  worker idle RSS < 80 MB: {before:.1f} MB",
    ]
    if result.requests < args.requests:
        lines.append(f"note: stopped at --max-seconds {args.max_seconds} before {args.requests} requests")
    return "\n".join(lines), {"soak": data}


def _mark(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


# ---------------------------------------------------------------------- idle streams


@dataclass
class IdleResult:
    target: str
    streams_open: int
    rss_before_mb: float
    rss_open_mb: float
    rss_after_mb: float
    seconds_to_open: float
    fds_open: int  # descriptors the process under test held with the streams open
    upstream_fds_open: int  # and the upstream: each held stream is one upstream connection

    @property
    def per_stream_kb(self) -> float:
        return (self.rss_open_mb - self.rss_before_mb) * 1024 / max(self.streams_open, 1)


def idle(args: argparse.Namespace, procs: Processes, cores: Cores, load: LoadGenerator) -> tuple[str, dict]:
    """Open `--streams` streams whose upstream sends one chunk and then nothing for an hour,
    through the floor and then the gateway, and read each one's RSS with them open."""
    upstream = start_upstream(procs, cores)
    results = []
    for target in ("floor", "gateway-memory"):
        if target == "floor":
            service = start_floor(procs, cores, upstream)
            request = chat_request(service.base_url, IDLE)
        else:
            service = start_gateway(procs, cores, upstream, name=target, redis_url=None, limited=False)
            request = messages_request(service.base_url, IDLE, BENCH_KEY)
        try:
            load.run(
                messages_request(service.base_url, NONSTREAM, BENCH_KEY)
                if target != "floor"
                else chat_request(service.base_url, NONSTREAM),
                16,
                1,
            )  # warm-up
            results.append(asyncio.run(_hold_streams(target, service, upstream, request, args.streams, args.hold)))
        finally:
            procs.stop(service.started)
        r = results[-1]
        print(
            f"  {target}: {r.streams_open} streams open, RSS {r.rss_before_mb:.1f} → {r.rss_open_mb:.1f} MB", flush=True
        )
    lines = [
        "| target | streams open | open s | its fds | upstream fds | RSS before MB | RSS open MB | "
        "per stream KB | RSS after close MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.target} | {r.streams_open} | {r.seconds_to_open:.1f} | {r.fds_open} | {r.upstream_fds_open} | "
        f"{r.rss_before_mb:.1f} | {r.rss_open_mb:.1f} | {r.per_stream_kb:.1f} | {r.rss_after_mb:.1f} |"
        for r in results
    ]
    gateway = results[-1]
    lines += [
        "",
        _mark(gateway.streams_open == args.streams and gateway.rss_open_mb < 200)
        + f"  {args.streams} idle open streams cost under 200 MB in all (gateway RSS with them open): "
        f"{gateway.rss_open_mb:.1f} MB with {gateway.streams_open} open",
    ]
    return "\n".join(lines), {"idle": [asdict(r) | {"per_stream_kb": r.per_stream_kb} for r in results]}


async def _hold_streams(
    target: str, service: Service, upstream: Service, request, count: int, hold: float
) -> IdleResult:
    pids = service.started.pids()
    before = rss_mb(pids)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        responses: list[aiohttp.ClientResponse] = []
        gate = asyncio.Semaphore(100)  # a burst of thousands of SYNs overflows the listen backlog

        async def open_one() -> None:
            async with gate:
                response = await session.post(request.url, data=request.body, headers=request.headers)
                responses.append(response)
                first = await asyncio.wait_for(response.content.readany(), 30)  # the stream's first bytes
                if response.status != 200 or not first.startswith((b"event: message_start", b"data: ")):
                    raise RuntimeError(f"not a stream: {response.status} {first[:200]!r}")

        started = time.monotonic()
        outcomes = await asyncio.gather(*(open_one() for _ in range(count)), return_exceptions=True)
        seconds = time.monotonic() - started
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            print(f"  {target}: {len(failures)} streams failed to open, first: {failures[0]!r}", flush=True)
        await asyncio.sleep(hold)
        open_rss = rss_mb(pids)
        fds, upstream_fds = open_files(pids), open_files(upstream.started.pids())
        for response in responses:
            response.close()
    await asyncio.sleep(2.0)
    return IdleResult(target, count - len(failures), before, open_rss, rss_mb(pids), seconds, fds, upstream_fds)


# ---------------------------------------------------------------------- scaling


def _per_core(row: Row) -> float:
    return row.per_second / (row.test_cpu_pct / 100) if row.test_cpu_pct else 0.0


def scale(args: argparse.Namespace, procs: Processes, cores: Cores, load: LoadGenerator) -> tuple[str, dict]:
    """Non-streaming req/s with `--workers 1` (on the core under test) and then more workers
    (on every core: a second worker needs a second core, which it shares with wrk and the
    upstream on a 2-core machine)."""
    upstream = start_upstream(procs, cores)
    redis = start_redis(procs, cores)
    if redis is None:
        raise SystemExit("scale needs redis-server: the memory store refuses several workers")
    every_cpu = ",".join(c for c in (cores.under_test, cores.load) if c) or None
    rows: list[Row] = []
    for workers in (int(n) for n in args.workers.split(",")):
        cpus = cores.under_test if workers == 1 else every_cpu
        name = f"gateway-redis-w{workers}"
        gateway = start_gateway(
            procs, cores, upstream, name=name, redis_url=redis_url(redis), limited=False, workers=workers, cpus=cpus
        )
        try:
            request = messages_request(gateway.base_url, NONSTREAM, BENCH_KEY)
            load.run(request, args.connections, 2)  # warm-up: every worker gets connections
            pids = gateway.started.pids()
            reset_peak_rss(pids)
            meter = Meter(pids, upstream.started.pids() + redis.started.pids())
            result = load.run(request, args.connections, args.seconds)
            rows.append(make_row(name, NONSTREAM, args.connections, result, pids, meter.stop()))
            print(f"  workers {workers} (CPUs {cpus}): {rows[-1].per_second:.0f} req/s", flush=True)
        finally:
            procs.stop(gateway.started)
    lines = [table(rows, skip=("CPU ×floor", "+p50 ms c1")), ""]
    for row in rows[1:]:
        gain = row.per_second / rows[0].per_second
        lines.append(
            f"{row.target}: {gain:.2f}× the req/s of {rows[0].target} (linear would be {row.target.rsplit('w', 1)[1]}×)"
        )
    lines += [f"{row.target}: {_per_core(row):.0f} req/s per core the gateway used" for row in rows]
    lines += [
        "",
        "test %: the gateway's CPU (all its processes), load %: upstream + wrk + redis, other %: the rest of",
        "the machine; each as % of one core. With more than one worker the gateway runs on every CPU, next",
        "to wrk, the upstream and redis: on a 2-core machine that caps the gain well below linear, whatever",
        "the gateway does; req/s per core used shows whether a worker does as much with a core as before.",
    ]
    return "\n".join(lines), {"scale": [asdict(r) for r in rows]}
