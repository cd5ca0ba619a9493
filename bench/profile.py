"""`python -m bench profile`: where one target's CPU goes under one scenario's load.

py-spy samples the process under test while wrk drives it; the samples are folded into
the functions that hold the most time, by themselves (self) and with what they call
(total), each as a share of the samples in which the process was running Python.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from collections import Counter

from bench.load import LoadGenerator
from bench.matrix import TARGETS
from bench.processes import Cores, Processes
from bench.stack import redis_url, start_floor, start_gateway, start_redis, start_upstream
from bench.targets import BENCH_KEY, LIMITED_KEY, SCENARIOS, chat_request, messages_request


def _frame(text: str) -> str:
    """py-spy's `function (path/to/file.py:line)` as `file.py:function`."""
    name, _, where = text.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{file}:{name}" if file else name


def fold(raw: str) -> tuple[Counter, Counter, int]:
    """py-spy's raw (collapsed) output → self counts, total counts, samples."""
    own: Counter = Counter()
    total: Counter = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for name in set(frames):
            total[name] += n
    return own, total, samples


def profile(args: argparse.Namespace, procs: Processes, cores: Cores, load: LoadGenerator) -> tuple[str, dict]:
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("profile needs py-spy (pip install py-spy)")
    if args.target not in TARGETS or args.target == "direct":
        raise SystemExit(f"--target: one of {', '.join(t for t in TARGETS if t != 'direct')}")
    scenario = SCENARIOS[args.scenario]
    upstream = start_upstream(procs, cores)
    if args.target == "floor":
        service = start_floor(procs, cores, upstream)
        request = chat_request(service.base_url, scenario)
    else:
        redis = start_redis(procs, cores) if args.target.startswith("gateway-redis") else None
        service = start_gateway(
            procs, cores, upstream, name=args.target, redis_url=redis_url(redis), limited=args.target == "gateway-redis"
        )
        key = LIMITED_KEY if args.target == "gateway-redis" else BENCH_KEY
        request = messages_request(service.base_url, scenario, key)
    load.run(request, args.connections, 2)  # warm-up
    out = procs.scratch / "profile.txt"
    spy_run = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(service.started.pid),
            "--rate",
            str(args.rate),
            "--format",
            "raw",
            "--output",
            str(out),
            "--duration",
            str(args.seconds + 1),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.5)
    result = load.run(request, args.connections, args.seconds)
    _, errors = spy_run.communicate(timeout=args.seconds + 30)
    if not out.exists():
        raise SystemExit(f"py-spy wrote nothing: {errors.decode(errors='replace')[-2000:]}")
    own, total, samples = fold(out.read_text())
    if args.save:
        args.save.write_text(out.read_text())
    # A sample stands for 1/rate s of the process running Python (py-spy leaves idle out).
    per_request = 1e6 / args.rate / max(result.requests, 1)
    lines = [
        f"{args.target} {scenario.name} c{args.connections}: {result.per_second:.0f} req/s, "
        f"{samples} samples while running ({samples * per_request:.0f} µs per request)",
        "",
        "| self % | self µs/req | total % | function |",
        "|---:|---:|---:|---|",
    ]
    for name, count in own.most_common(args.top):
        lines.append(
            f"| {100 * count / samples:5.1f} | {count * per_request:6.1f} | "
            f"{100 * total[name] / samples:5.1f} | {name} |"
        )
    lines += ["", "| total % | total µs/req | function (by total) |", "|---:|---:|---|"]
    for name, count in total.most_common(args.top):
        lines.append(f"| {100 * count / samples:5.1f} | {count * per_request:6.1f} | {name} |")
    data = {"samples": samples, "self": dict(own.most_common(200)), "total": dict(total.most_common(200))}
    return "\n".join(lines), {"profile": data}
