"""The fallback load generator, for machines without wrk: aiohttp in one process.

    python -m bench.driver --url URL --body-file F [--header 'name: value'] --connections N
                           --seconds S [--max-requests M]

Prints the same `BENCH_JSON {...}` line as bench/wrk/post.lua. It costs far more CPU per
request than wrk, so on a small machine it can be the bottleneck: the bench says when it
is used.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import aiohttp
import orjson


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


async def drive(
    url: str, body: bytes, headers: dict[str, str], connections: int, seconds: float, max_requests: int | None
) -> dict:
    latencies: list[float] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    received = 0
    stop_at = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal received
        while time.perf_counter() < stop_at and (max_requests is None or received < max_requests):
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    async for _ in response.content.iter_any():
                        pass
                    if response.status >= 400:
                        errors["status"] += 1
            except aiohttp.ClientConnectionError:
                errors["read"] += 1
                continue
            received += 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        began = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    us = [v * 1e6 for v in latencies]
    return {
        "requests": received,
        "duration_us": int(elapsed * 1e6),
        "bytes": 0,
        "errors": errors,
        "latency_us": {
            "p50": percentile(us, 0.5),
            "p90": percentile(us, 0.9),
            "p99": percentile(us, 0.99),
            "max": us[-1] if us else 0,
            "mean": sum(us) / len(us) if us else 0,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.driver", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True, type=Path)
    parser.add_argument("--header", action="append", default=[], help="'name: value', repeatable")
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--max-requests", type=int)
    args = parser.parse_args(argv)
    headers = {}
    for line in args.header:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    result = asyncio.run(
        drive(args.url, args.body_file.read_bytes(), headers, args.connections, args.seconds, args.max_requests)
    )
    print("BENCH_JSON " + orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
