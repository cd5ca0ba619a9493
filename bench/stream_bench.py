"""Streaming through the gateway vs straight to the upstream, measured in the same run.

    python bench/stream_bench.py [--chunks 20] [--concurrency 16] [--seconds 10] [--delay-ms 0]

Starts the fake upstream and the gateway as separate processes (the gateway pinned to one
core when `taskset` exists), then drives both paths with the same load from this process:
- direct:  Chat Completions stream from the upstream (`/v1/chat/completions`);
- gateway: the same stream translated into Messages SSE (`/v1/messages`, model `demo`).
Prints streams/s, relayed events/s, time to first byte (p50/p99), the gateway's CPU per
stream, and the ratios gateway/direct. Numbers vary with the machine; the ratios are what
to compare between commits.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

from _harness import BENCH_KEY, cpu_seconds, drive, free_port, start


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="pause between upstream chunks")
    args = parser.parse_args()

    upstream_port, gateway_port = free_port(), free_port()
    config = f"""
server: {{port: {gateway_port}}}
teams:
  - id: bench
    keys: [{{name: bench, key: gk-bench-key-0001}}]
backends:
  demo:
    type: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
    preset: vllm
    headers: {{x-fake-chunks: "{args.chunks}", x-fake-chunk-delay-ms: "{args.delay_ms}"}}
models:
  - name: demo
    routes: [{{backend: demo, model: demo-model}}]
"""
    scratch = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    (scratch / "config.yaml").write_text(config)
    upstream = await start(["fake-upstream", "--port", str(upstream_port), "--no-record"], "listening", 1, scratch / "upstream.log")
    # At info level, as in production: the access log line per request is part of the cost.
    gateway = await start(["serve", "--config", str(scratch / "config.yaml")], "gateway listening on", 0, scratch / "gateway.log")
    try:
        messages = {"model": "demo", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        chat = {**messages, "model": "demo-model", "stream_options": {"include_usage": True}}
        chat_url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
        headers_note = f"{args.chunks} chunks, {args.delay_ms} ms apart, {args.concurrency} connections, {args.seconds:g} s"
        # Warm both paths so connection pools and imports are in place.
        await drive(chat_url, chat, concurrency=2, seconds=0.5, headers={"x-fake-chunks": "2"})
        await drive(f"http://127.0.0.1:{gateway_port}/v1/messages", messages, concurrency=2, seconds=0.5, headers=BENCH_KEY)
        # The direct path asks the upstream for the same stream shape the gateway's backend does.
        shape = {"x-fake-chunks": str(args.chunks), "x-fake-chunk-delay-ms": str(args.delay_ms)}
        direct = await drive(chat_url, chat, concurrency=args.concurrency, seconds=args.seconds, headers=shape)
        before = cpu_seconds(gateway.pid)
        via = await drive(
            f"http://127.0.0.1:{gateway_port}/v1/messages", messages, concurrency=args.concurrency, seconds=args.seconds,
            headers=BENCH_KEY,
        )
        gateway_cpu = cpu_seconds(gateway.pid) - before
    finally:
        for process in (gateway, upstream):
            process.terminate()
            await process.wait()
        shutil.rmtree(scratch)

    print(f"stream benchmark: {headers_note}")
    print(f"{'':10}{'streams/s':>12}{'events/s':>12}{'ttfb p50 ms':>14}{'ttfb p99 ms':>14}")
    for name, r in (("direct", direct), ("gateway", via)):
        print(f"{name:10}{r['streams_per_s']:>12.1f}{r['events_per_s']:>12.0f}{r['ttfb_p50_ms']:>14.2f}{r['ttfb_p99_ms']:>14.2f}")
    print(f"gateway/direct: streams/s x{via['streams_per_s'] / direct['streams_per_s']:.2f}, "
          f"ttfb p50 +{via['ttfb_p50_ms'] - direct['ttfb_p50_ms']:.2f} ms")
    print(f"gateway CPU per stream: {gateway_cpu / max(via['streams'], 1) * 1e6:.0f} µs "
          f"({gateway_cpu / max(via['streams'] * (args.chunks + 6), 1) * 1e6:.1f} µs per relayed event)")


if __name__ == "__main__":
    asyncio.run(main())
