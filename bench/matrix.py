"""`python -m bench`: direct, floor and gateway, every scenario and concurrency, one table.

For each target the process under test is started (pinned to its core), warmed up, then
driven by wrk once per (scenario, concurrency) for `--seconds`; its CPU time and memory
are read from /proc around each run. The floor is measured in the same run, and every
gateway CPU figure is divided by the floor's for the same scenario and concurrency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bench.load import LoadGenerator, LoadResult
from bench.processes import Cores, Meter, Processes, Usage, peak_rss_mb, reset_peak_rss, rss_mb
from bench.stack import Service, redis_url, start_floor, start_gateway, start_redis, start_upstream
from bench.targets import BENCH_KEY, LIMITED_KEY, SCENARIOS, Request, Scenario, chat_request, messages_request

# gateway-redis-nolimits (the Redis store, a team without limits) tells the store's cost
# from the limits'; it runs only when named with --only.
TARGETS = ("direct", "floor", "gateway-memory", "gateway-redis", "gateway-redis-nolimits")
DEFAULT_TARGETS = TARGETS[:4]
CONCURRENCY = (1, 16, 64)
REFERENCE_CONCURRENCY = 16  # the reference setup: 16 connections
WARMUP_CONNECTIONS = 16
NOISY_PERCENT = 20  # other processes using more than this much of a core make a run noisy


@dataclass
class Row:
    target: str
    scenario: str
    concurrency: int
    requests: int
    per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float | None = None  # the process under test's CPU per request
    peak_rss_mb: float | None = None
    rss_mb: float | None = None
    test_cpu_pct: float | None = None  # the process under test's CPU, % of one core
    load_cpu_pct: float | None = None  # upstream + wrk (+ redis + this script), % of one core
    other_cpu_pct: float | None = None  # everything else on the machine, % of one core
    cpu_ratio: float | None = None  # gateway rows: cpu_us / the floor's
    added_p50_ms: float | None = None  # c1 rows: p50 over direct's


@dataclass
class TargetInfo:
    target: str
    idle_rss_mb: float | None  # after start-up and warm-up, with no request in flight


class Matrix:
    """Runs the selected targets × scenarios × concurrencies; `rows` and `targets` hold
    what was measured."""

    def __init__(
        self, procs: Processes, cores: Cores, load: LoadGenerator, *, seconds: int, warmup: int, repeat: int = 1
    ) -> None:
        self.procs = procs
        self.cores = cores
        self.load = load
        self.seconds = seconds
        self.warmup = warmup
        self.repeat = repeat
        self.rows: list[Row] = []
        self.targets: list[TargetInfo] = []
        self.notes: list[str] = []
        self.load_side: list[Service] = []  # upstream and redis: their CPU is "load"
        self.other_percents: list[float] = []  # per run: how much of a core the rest of the machine used

    def run(self, targets: list[str], scenarios: list[Scenario], concurrency: list[int]) -> None:
        upstream = start_upstream(self.procs, self.cores)
        wants_redis = any(t.startswith("gateway-redis") for t in targets)
        redis = start_redis(self.procs, self.cores) if wants_redis else None
        self.load_side = [upstream] + ([redis] if redis else [])
        # Every target runs at once (pinned alike; idle but for its own runs), and the runs
        # go round the targets cell by cell: a gateway and the floor it is divided by are
        # measured seconds apart, not minutes, so drifts in the machine's speed (other
        # tenants, clocks) land on both sides of a ratio.
        started: dict[str, Service | None] = {}
        try:
            for target in targets:
                if target.startswith("gateway-redis") and redis is None:
                    self.notes.append(f"{target} skipped: no redis-server on this machine")
                    continue
                started[target] = self._start(target, upstream, redis_url(redis))
            for target, under_test in started.items():
                self._warm(target, under_test, upstream, scenarios)
            runs: dict[tuple[str, str, int], list[Row]] = {}
            for _ in range(self.repeat):
                for scenario in scenarios:
                    for connections in concurrency:
                        for target, under_test in started.items():
                            request = self._request(target, scenario, upstream, under_test)
                            row = self._measure(target, scenario, connections, request, under_test)
                            runs.setdefault((target, scenario.name, connections), []).append(row)
                            self._print(target, scenario, connections, row)
            self.rows += [median_run(rows) for rows in runs.values()]
        finally:
            for under_test in started.values():
                if under_test is not None:
                    self.procs.stop(under_test.started)
        fill_comparisons(self.rows)

    def _start(self, target: str, upstream: Service, redis: str | None) -> Service | None:
        if target == "direct":
            return None
        if target == "floor":
            return start_floor(self.procs, self.cores, upstream)
        store = redis if target.startswith("gateway-redis") else None
        return start_gateway(
            self.procs, self.cores, upstream, name=target, redis_url=store, limited=target == "gateway-redis"
        )

    def _request(self, target: str, scenario: Scenario, upstream: Service, under_test: Service | None) -> Request:
        if under_test is None:
            return chat_request(upstream.base_url, scenario)
        if target == "floor":
            return chat_request(under_test.base_url, scenario)
        key = LIMITED_KEY if target == "gateway-redis" else BENCH_KEY
        return messages_request(under_test.base_url, scenario, key)

    def _warm(self, target: str, under_test: Service | None, upstream: Service, scenarios: list[Scenario]) -> None:
        for scenario in scenarios if self.warmup else ():
            warm = self.load.run(self._request(target, scenario, upstream, under_test), WARMUP_CONNECTIONS, self.warmup)
            if warm.error_count:
                self.notes.append(f"{target} warm-up {scenario.name}: errors {warm.errors}")
        idle = rss_mb(under_test.started.pids()) if under_test else None
        self.targets.append(TargetInfo(target, idle))
        print(f"  {target}: idle RSS after warm-up {_fmt(idle, '.1f')} MB", flush=True)

    @staticmethod
    def _print(target: str, scenario: Scenario, connections: int, row: Row) -> None:
        print(
            f"  {target:15} {scenario.name:13} c{connections:<3} {row.per_second:9.0f} req/s  "
            f"p50 {row.p50_ms:7.2f} ms  CPU {_fmt(row.cpu_us, '.0f')} µs/req  "
            f"other {_fmt(row.other_cpu_pct, '.0f')}%" + (f"  ERRORS {row.errors}" if row.errors else ""),
            flush=True,
        )

    def _measure(
        self, target: str, scenario: Scenario, connections: int, request: Request, under_test: Service | None
    ) -> Row:
        pids = under_test.started.pids() if under_test else []
        reset_peak_rss(pids)
        meter = Meter(pids, [pid for service in self.load_side for pid in service.started.pids()])
        result = self.load.run(request, connections, self.seconds)
        usage = meter.stop()
        what = f"{target} {scenario.name} c{connections}"
        if result.error_count:
            self.notes.append(f"{what}: errors {result.errors}")
        self.other_percents.append(usage.percent(usage.other))
        return make_row(target, scenario, connections, result, pids, usage)


def make_row(
    target: str, scenario: Scenario, connections: int, result: LoadResult, pids: list[int], usage: Usage
) -> Row:
    row = Row(
        target,
        scenario.name,
        connections,
        result.requests,
        result.per_second,
        result.p50_ms,
        result.p99_ms,
        result.error_count,
        load_cpu_pct=usage.percent(usage.load),
        other_cpu_pct=usage.percent(usage.other),
    )
    if pids:
        row.cpu_us = usage.under_test / max(result.requests, 1) * 1e6
        row.peak_rss_mb = peak_rss_mb(pids)
        row.rss_mb = rss_mb(pids)
        row.test_cpu_pct = usage.percent(usage.under_test)
    return row


def median_run(rows: list[Row]) -> Row:
    """The run with the median CPU per request (the median req/s where there is no process
    under test); errors are those of every run."""
    ordered = sorted(rows, key=lambda r: r.cpu_us if r.cpu_us is not None else -r.per_second)
    chosen = ordered[(len(ordered) - 1) // 2]
    chosen.errors = sum(r.errors for r in rows)
    return chosen


def fill_comparisons(rows: list[Row]) -> None:
    """Gateway CPU as a ratio to the floor's (same scenario and concurrency), and at
    concurrency 1 the median latency added over a direct call."""
    by_key = {(r.target, r.scenario, r.concurrency): r for r in rows}
    for row in rows:
        floor = by_key.get(("floor", row.scenario, row.concurrency))
        if row.target.startswith("gateway") and floor and floor.cpu_us and row.cpu_us is not None:
            row.cpu_ratio = row.cpu_us / floor.cpu_us
        direct = by_key.get(("direct", row.scenario, 1))
        if row.concurrency == 1 and row.target != "direct" and direct:
            row.added_p50_ms = row.p50_ms - direct.p50_ms


# ---------------------------------------------------------------------- output


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


COLUMNS = (
    ("target", 22, lambda r: r.target),
    ("scenario", 13, lambda r: r.scenario),
    ("conc", 5, lambda r: str(r.concurrency)),
    ("req/s", 9, lambda r: f"{r.per_second:.0f}"),
    ("p50 ms", 8, lambda r: f"{r.p50_ms:.2f}"),
    ("p99 ms", 8, lambda r: f"{r.p99_ms:.2f}"),
    ("CPU µs/req", 11, lambda r: _fmt(r.cpu_us, ".0f")),
    ("peak RSS MB", 12, lambda r: _fmt(r.peak_rss_mb, ".1f")),
    ("CPU ×floor", 11, lambda r: _fmt(r.cpu_ratio, ".2f")),
    ("+p50 ms c1", 11, lambda r: _fmt(r.added_p50_ms, "+.3f")),
    ("test %", 7, lambda r: _fmt(r.test_cpu_pct, ".0f")),
    ("load %", 7, lambda r: _fmt(r.load_cpu_pct, ".0f")),
    ("other %", 8, lambda r: _fmt(r.other_cpu_pct, ".0f")),
    ("errors", 7, lambda r: str(r.errors)),
)


def table(rows: list[Row], skip: tuple[str, ...] = ()) -> str:
    """A Markdown table (pastes into bench/README.md as it is), without the `skip` columns."""
    columns = [c for c in COLUMNS if c[0] not in skip]
    lines = [
        "| " + " | ".join(f"{name:>{width}}" for name, width, _ in columns) + " |",
        "|" + "|".join("-" * (width + 1) + ":" for _, width, _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(f"{cell(row):>{width}}" for _, width, cell in columns) + " |")
    return "\n".join(lines)


@dataclass
class Verdict:
    goal: str
    value: str
    passed: bool | None  # None: not measured in this run

    def line(self) -> str:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[self.passed]
        return f"{mark}  {self.goal}: {self.value}"


def verdicts(rows: list[Row], targets: list[TargetInfo]) -> list[Verdict]:
    by_key = {(r.target, r.scenario, r.concurrency): r for r in rows}
    c = REFERENCE_CONCURRENCY

    def ratio(target: str, scenario: str, limit: float) -> Verdict:
        goal = f"{target} CPU/req ≤ {limit}× floor, {scenario}, c{c}"
        row = by_key.get((target, scenario, c))
        if row is None or row.cpu_ratio is None:
            return Verdict(goal, "not measured", None)
        others = ", ".join(
            f"c{r.concurrency} {r.cpu_ratio:.2f}×"
            for r in rows
            if (r.target, r.scenario) == (target, scenario) and r.concurrency != c and r.cpu_ratio
        )
        value = f"{row.cpu_ratio:.2f}× ({row.cpu_us:.0f} µs vs floor {row.cpu_us / row.cpu_ratio:.0f} µs)"
        return Verdict(goal, value + (f"; {others}" if others else ""), row.cpu_ratio <= limit)

    found = [
        ratio("gateway-memory", "nonstream", 2.0),
        ratio("gateway-memory", "stream-b2b", 2.0),
        ratio("gateway-memory", "stream-paced", 1.5),
        ratio("gateway-redis", "nonstream", 2.5),
        ratio("gateway-redis", "stream-b2b", 2.5),
        ratio("gateway-redis", "stream-paced", 2.5),
    ]
    latency = by_key.get(("gateway-memory", "nonstream", 1))
    goal = "gateway-memory median latency added at c1 < 0.5 ms over direct, nonstream"
    if latency is None or latency.added_p50_ms is None:
        found.append(Verdict(goal, "not measured", None))
    else:
        found.append(Verdict(goal, f"+{latency.added_p50_ms:.3f} ms", latency.added_p50_ms < 0.5))
    for info in targets:
        if info.target.startswith("gateway") and info.idle_rss_mb is not None:
            found.append(
                Verdict(
                    f"{info.target} worker idle RSS < 80 MB (after warm-up)",
                    f"{info.idle_rss_mb:.1f} MB",
                    info.idle_rss_mb < 80,
                )
            )
    return found


def report(matrix: Matrix) -> str:
    lines = [table(matrix.rows), ""]
    lines += [v.line() for v in verdicts(matrix.rows, matrix.targets) if v.passed is not None]
    lines += [
        "",
        "Not in this run: throughput vs --workers (`python -m bench scale`), RSS over a million requests "
        "(`python -m bench soak`), 2,000 idle streams (`python -m bench idle`).",
    ]
    notes = list(matrix.notes)
    noisy = sorted(p for p in matrix.other_percents if p > NOISY_PERCENT)
    if noisy:
        notes.append(
            f"other processes used more than {NOISY_PERCENT}% of a core in {len(noisy)} of "
            f"{len(matrix.other_percents)} runs (median of those {noisy[len(noisy) // 2]:.0f}%, max "
            f"{noisy[-1]:.0f}%): req/s and latency are noisy, CPU per request less so"
        )
    if notes:
        lines += ["", "Notes:"] + [f"- {note}" for note in notes]
    return "\n".join(lines)


def as_json(matrix: Matrix) -> dict:
    return {
        "rows": [asdict(r) for r in matrix.rows],
        "targets": [asdict(t) for t in matrix.targets],
        "verdicts": [asdict(v) for v in verdicts(matrix.rows, matrix.targets)],
        "notes": matrix.notes,
    }


def parse_selection(text: str | None, allowed, kind: str) -> list:
    """`a,b` → the named items, in the canonical order; None → all."""
    if text is None:
        return list(allowed)
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in {str(a) for a in allowed}]
    if unknown:
        raise SystemExit(f"unknown {kind}: {', '.join(unknown)} (choose from {', '.join(map(str, allowed))})")
    return [a for a in allowed if str(a) in names]


def scenario_list(text: str | None) -> list[Scenario]:
    if text is None:
        return [scenario for scenario in SCENARIOS.values() if scenario.default]
    return [SCENARIOS[name] for name in parse_selection(text, tuple(SCENARIOS), "scenario")]
