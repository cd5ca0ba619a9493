"""`python -m bench worst`: the request shapes a client with one valid key could send to
hold a worker, each at sizes n, 2n and 4n, against the running gateway.

Every shape must be answered (or refused) in time linear in its size: each doubling of the
size may cost about twice the time, where work quadratic in it would cost four times. It
prints, per shape and size, the body's bytes, the answer's status, the time until the whole
answer (at the client, median of `--repeat`) and the gateway's own CPU for the request
(schedstat: the process alone handles it), and the ratio of each to the size before.

Two gateways (memory store, the chat backend to the bench upstream) take turns on the
core under test: one with `server.max_messages` raised to let a million messages through,
one with the defaults, where the same bodies and the too-deep schemas are refused.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import aiohttp
import orjson

from bench.load import LoadGenerator
from bench.processes import Cores, Processes, cpu_seconds
from bench.stack import Service, start_gateway, start_upstream
from bench.targets import BENCH_KEY, SCENARIOS
from gateway.protocols.messages import DEFAULT_CAPS

MODEL = SCENARIOS["nonstream"].gateway_model
DEPTH = DEFAULT_CAPS.max_json_depth
# Per doubling of the size: linear work costs about 2× (a little more where the data
# outgrows a cache), work quadratic in the size 4×; this leaves room for a noisy machine.
LINEAR_RATIO = 3.0
RAISED = {"max_messages": 1_000_000}  # 1M tiny turns are ~30 MB, within the 32 MiB body limit


def _body(**fields: object) -> bytes:
    return orjson.dumps({"model": MODEL, "max_tokens": 16, **fields})


def turns(n: int) -> bytes:
    """`n` one-character user turns in a row: the translation joins them into one."""
    return _body(messages=[{"role": "user", "content": "x"}] * n)


def blocks(n: int) -> bytes:
    return _body(messages=[{"role": "user", "content": [{"type": "text", "text": "x"}] * n}])


def tools(n: int) -> bytes:
    schema = {
        "type": "object",
        "properties": {"q": {"type": "string", "description": "what to look for"}},
        "required": ["q"],
    }
    listed = [{"name": f"tool_{i}", "description": f"Tool number {i}.", "input_schema": schema} for i in range(n)]
    return _body(messages=[{"role": "user", "content": "x"}], tools=listed)


def deep_schema(levels: int) -> bytes:
    """A tool schema (arrays of arrays … of strings) taking the body to `levels` levels of
    nesting: the body is level 1, `tools` 2, the tool 3, the schema 4. Written out by
    hand: orjson encodes no deeper than 254 levels."""
    wrappers = levels - 4
    schema = b'{"type":"array","items":' * wrappers + b'{"type":"string"}' + b"}" * wrappers
    head = _body(messages=[{"role": "user", "content": "x"}])[:-1]
    return head + b',"tools":[{"name":"t","input_schema":' + schema + b"}]}"


@dataclass(frozen=True)
class Shape:
    name: str
    unit: str
    sizes: tuple[int, int, int]
    build: Callable[[int], bytes]
    gateway: str  # "raised" or "default"
    status: int  # the answer it must get


SHAPES = (
    Shape("messages", "turns", (250_000, 500_000, 1_000_000), turns, "raised", 200),
    Shape("messages over the cap", "turns", (250_000, 500_000, 1_000_000), turns, "default", 400),
    Shape(
        "blocks", "blocks in one message", (2_500, 5_000, DEFAULT_CAPS.max_blocks_per_message), blocks, "default", 200
    ),
    Shape("tools", "tools", (10_000, 20_000, 40_000), tools, "default", 200),
    Shape("deep schema", "levels", (DEPTH // 4, DEPTH // 2, DEPTH), deep_schema, "default", 200),
    Shape(
        "deep schema past the limit",
        "levels",
        (DEPTH + 1, 2 * (DEPTH + 1), 4 * (DEPTH + 1)),
        deep_schema,
        "default",
        400,
    ),
)


@dataclass
class Point:
    shape: str
    size: int
    bytes: int
    status: int
    seconds: float  # until the whole answer, at the client (median)
    cpu_seconds: float  # the gateway's CPU for it (median)
    message: str = ""  # a refusal's error message


def worst(args: argparse.Namespace, procs: Processes, cores: Cores, load: LoadGenerator) -> tuple[str, dict]:
    upstream = start_upstream(procs, cores)
    gateways = {
        "raised": start_gateway(
            procs, cores, upstream, name="gateway-raised", redis_url=None, limited=False, server=RAISED
        ),
        "default": start_gateway(procs, cores, upstream, name="gateway-default", redis_url=None, limited=False),
    }
    points = asyncio.run(_measure(gateways, args.repeat))
    return _report(points), {"worst": [asdict(p) for p in points]}


async def _measure(gateways: dict[str, Service], repeat: int) -> list[Point]:
    points = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for service in gateways.values():  # warm-up: connections, first allocations
            await _send(http, service, turns(10))
        for shape in SHAPES:
            service = gateways[shape.gateway]
            for size in shape.sizes:
                body = shape.build(size)
                runs = [await _send(http, service, body) for _ in range(repeat)]
                status, message = runs[0][0], runs[0][1]
                point = Point(
                    shape.name,
                    size,
                    len(body),
                    status,
                    statistics.median(r[2] for r in runs),
                    statistics.median(r[3] for r in runs),
                    message,
                )
                points.append(point)
                print(
                    f"  {shape.name}: {size} {shape.unit}, {len(body) / 1e6:.2f} MB → {status} in "
                    f"{point.seconds * 1000:.1f} ms ({point.cpu_seconds * 1000:.1f} ms gateway CPU)",
                    flush=True,
                )
    return points


async def _send(http: aiohttp.ClientSession, service: Service, body: bytes) -> tuple[int, str, float, float]:
    """One request: status, the error message if refused, seconds until the whole answer,
    the gateway's CPU seconds meanwhile."""
    pids = service.started.pids()
    headers = {"content-type": "application/json", "x-api-key": BENCH_KEY}
    cpu = cpu_seconds(pids)
    started = time.perf_counter()
    async with http.post(f"{service.base_url}/v1/messages", data=body, headers=headers) as response:
        answer = await response.read()
    seconds = time.perf_counter() - started
    message = ""
    if response.status != 200:
        message = orjson.loads(answer).get("error", {}).get("message", "")
    return response.status, message, seconds, cpu_seconds(pids) - cpu


def _report(points: list[Point]) -> str:
    lines = [
        "| shape | size | MB | status | ms | ×prev | gateway CPU ms | ×prev |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts, messages = [], []
    for shape in SHAPES:
        rows = [p for p in points if p.shape == shape.name]
        for before, point in zip([None, *rows], rows, strict=False):
            wall = f"{point.seconds / before.seconds:.2f}" if before else ""
            cpu = f"{point.cpu_seconds / before.cpu_seconds:.2f}" if before and before.cpu_seconds else ""
            lines.append(
                f"| {shape.name} | {point.size:,} {shape.unit} | {point.bytes / 1e6:.2f} | {point.status} | "
                f"{point.seconds * 1000:.1f} | {wall} | {point.cpu_seconds * 1000:.1f} | {cpu} |"
            )
        ratios = [b.cpu_seconds / a.cpu_seconds for a, b in zip(rows, rows[1:], strict=False) if a.cpu_seconds]
        statuses_ok = all(p.status == shape.status for p in rows)
        linear = all(r <= LINEAR_RATIO for r in ratios)
        verdicts.append(
            ("PASS" if statuses_ok and linear else "FAIL")
            + f"  {shape.name}: every answer {shape.status}, gateway CPU ×"
            + ", ×".join(f"{r:.2f}" for r in ratios)
            + f" per doubling (linear: ≤ {LINEAR_RATIO})"
        )
        messages += sorted({f"{shape.name}: {p.message}" for p in rows if p.message})
    return "\n".join([*lines, "", *verdicts, "", "Refusals said:", *messages])
