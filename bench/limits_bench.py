"""What team limits cost: requests per second and gateway CPU per request, limits on vs off,
measured in the same run.

    python bench/limits_bench.py [--concurrency 16] [--seconds 8]

Starts its own redis-server and the fake upstream, then one gateway process per scenario
(pinned to core 0 when `taskset` exists), each driven with the same non-streaming load:
- memory:           the embedded store, a team without limits (no Redis at all);
- redis, no limits: keys in Redis (cached), a team without limits;
- redis, limits:    a team with every rate limit, concurrency and budgets set (high enough
                    never to refuse), so each request makes its admission and settlement
                    round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path

from _harness import BENCH_KEY, cpu_seconds, drive, free_port, start

LIMITS = (
    "{requests_per_minute: 100000000, input_tokens_per_minute: 100000000000, output_tokens_per_minute: 100000000000,"
    " concurrent_requests: 100000, tokens_per_day: 100000000000000, tokens_per_month: 100000000000000}"
)


def config(upstream_port: int, gateway_port: int, store: str, limits: str | None) -> str:
    team_limits = f"\n    limits: {limits}" if limits else ""
    return f"""
server: {{port: {gateway_port}}}
store: {store}
teams:
  - id: bench{team_limits}
    keys: [{{name: bench, key: gk-bench-key-0001}}]
backends:
  demo:
    type: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
    preset: vllm
models:
  - name: demo
    routes: [{{backend: demo, model: demo-model}}]
"""


async def scenario(name: str, text: str, scratch: Path, args: argparse.Namespace) -> dict:
    (scratch / f"{name}.yaml").write_text(text)
    port = int(text.split("port: ", 1)[1].split("}", 1)[0])
    gateway = await start(["serve", "--config", str(scratch / f"{name}.yaml")], "gateway listening on", 0, scratch / f"{name}.log")
    try:
        url = f"http://127.0.0.1:{port}/v1/messages"
        body = {"model": "demo", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
        await drive(url, body, concurrency=4, seconds=1.0, headers=BENCH_KEY)  # warm-up
        before = cpu_seconds(gateway.pid)
        result = await drive(url, body, concurrency=args.concurrency, seconds=args.seconds, headers=BENCH_KEY)
        result["cpu_us"] = (cpu_seconds(gateway.pid) - before) / max(result["streams"], 1) * 1e6
        return result
    finally:
        gateway.terminate()
        await gateway.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    redis_port, upstream_port = free_port(), free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    upstream = await start(["fake-upstream", "--port", str(upstream_port), "--no-record"], "listening", 1, scratch / "upstream.log")
    redis_store = f"{{type: redis, url: 'redis://127.0.0.1:{redis_port}/0'}}"
    results = {}
    try:
        for name, store, limits in (
            ("memory", "{type: memory}", None),
            ("redis, no limits", redis_store, None),
            ("redis, limits", redis_store, LIMITS),
        ):
            results[name] = await scenario(name.replace(", ", "-").replace(" ", "-"), config(upstream_port, free_port(), store, limits), scratch, args)
    finally:
        upstream.terminate()
        await upstream.wait()
        redis.terminate()
        redis.wait()
        shutil.rmtree(scratch)

    base = results["memory"]
    print(f"limits benchmark: non-streaming, {args.concurrency} connections, {args.seconds:g} s per scenario")
    print(f"{'':18}{'req/s':>10}{'p50 ms':>10}{'CPU/req µs':>12}{'req/s ratio':>13}{'CPU ratio':>11}")
    for name, r in results.items():
        print(f"{name:18}{r['streams_per_s']:>10.0f}{r['ttfb_p50_ms']:>10.2f}{r['cpu_us']:>12.0f}"
              f"{r['streams_per_s'] / base['streams_per_s']:>13.2f}{r['cpu_us'] / base['cpu_us']:>11.2f}")


if __name__ == "__main__":
    asyncio.run(main())
