"""The gateway's benchmark: `python -m bench [run|soak|idle|scale|profile|worst] [options]` (bench/README.md).

python -m bench                                   everything, ~2 minutes (2 CPUs)
python -m bench --quick                           c1 and c16 only, 2 s runs
python -m bench --only floor,gateway-memory --scenario nonstream --concurrency 16
python -m bench soak --requests 1000000           RSS before, during and after
python -m bench idle --streams 2000               RSS with 2,000 open streams
python -m bench scale                             req/s with --workers 1 and 2
python -m bench profile --scenario stream-b2b     where the gateway's CPU goes (py-spy)
python -m bench worst                             worst-case shapes at n, 2n, 4n: linear?
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import orjson

from bench import matrix, modes, worst
from bench import profile as profiling
from bench.load import LoadGenerator
from bench.processes import Cores, Processes, raise_fd_limit
from bench.stack import machine
from bench.targets import SCENARIOS

COMMANDS = ("run", "soak", "idle", "scale", "profile", "worst")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, metavar="FILE", help="also save the results as JSON")
    parser.add_argument("--no-wrk", action="store_true", help="use the aiohttp driver even where wrk exists")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (configs, logs) and say where")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="the matrix (the default command)")
    run.add_argument("--seconds", type=int, default=3, help="per run (whole seconds, wrk's unit; default 3)")
    run.add_argument("--warmup", type=int, default=1, help="seconds per scenario before a target's runs (0: none)")
    run.add_argument("--repeat", type=int, default=1, help="runs per combination, keeping the median (default 1)")
    run.add_argument("--quick", action="store_true", help="concurrency 1 and 16 only, 2 s runs")
    run.add_argument(
        "--only", metavar="TARGETS", help=f"a,b of {', '.join(matrix.TARGETS)} (default: all but the last)"
    )
    run.add_argument(
        "--scenario",
        metavar="SCENARIOS",
        help="a,b of nonstream, stream-b2b, stream-paced (default), nonstream-cc, stream-cc",
    )
    run.add_argument("--concurrency", metavar="N,M", help="connections per run (default 1,16,64)")
    _common(run)

    soak = commands.add_parser("soak", help="a fixed number of requests through the gateway; RSS over time")
    soak.add_argument("--requests", type=int, default=1_000_000)
    soak.add_argument("--max-seconds", type=int, default=1200, help="stop there even if not all were sent")
    soak.add_argument("--connections", type=int, default=16)
    soak.add_argument("--every", type=float, default=10.0, help="seconds between RSS samples")
    _common(soak)

    idle = commands.add_parser("idle", help="RSS of the gateway and the floor holding idle streams open")
    idle.add_argument("--streams", type=int, default=2000)
    idle.add_argument("--hold", type=float, default=3.0, help="seconds to hold them before sampling")
    _common(idle)

    scale = commands.add_parser("scale", help="non-streaming req/s with --workers 1 and 2 (Redis store)")
    scale.add_argument("--seconds", type=int, default=5)
    scale.add_argument("--connections", type=int, default=64)
    scale.add_argument("--workers", default="1,2", metavar="N,M")
    _common(scale)

    prof = commands.add_parser("profile", help="py-spy on one target under one scenario's load")
    prof.add_argument("--target", default="gateway-memory", help="floor, gateway-memory, gateway-redis, ...")
    prof.add_argument("--scenario", default="nonstream", choices=sorted(SCENARIOS))
    prof.add_argument("--connections", type=int, default=16)
    prof.add_argument("--seconds", type=int, default=10)
    prof.add_argument("--rate", type=int, default=500, help="samples per second")
    prof.add_argument("--top", type=int, default=40, help="functions listed")
    prof.add_argument("--save", type=Path, metavar="FILE", help="also keep py-spy's folded stacks")
    _common(prof)

    bad = commands.add_parser("worst", help="the largest and deepest requests at n, 2n, 4n: time linear in size?")
    bad.add_argument("--repeat", type=int, default=3, help="requests per size, keeping the median (default 3)")
    _common(bad)

    if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]
    return parser.parse_args(argv)


def run_matrix(args: argparse.Namespace, procs: Processes, cores: Cores, load: LoadGenerator) -> tuple[str, dict]:
    if args.quick:
        args.seconds = min(args.seconds, 2)
    targets = matrix.parse_selection(args.only, matrix.TARGETS, "target") if args.only else list(matrix.DEFAULT_TARGETS)
    scenarios = matrix.scenario_list(args.scenario)
    default = "1,16" if args.quick else ",".join(map(str, matrix.CONCURRENCY))
    concurrency = [int(n) for n in (args.concurrency or default).split(",")]
    print(
        f"{len(targets)} targets × {len(scenarios)} scenarios × {len(concurrency)} concurrencies"
        f" × {args.repeat} repeats, {args.seconds} s each (+{args.warmup} s warm-up per scenario and target)",
        flush=True,
    )
    runner = matrix.Matrix(procs, cores, load, seconds=args.seconds, warmup=args.warmup, repeat=args.repeat)
    runner.run(targets, scenarios, concurrency)
    return matrix.report(runner), matrix.as_json(runner)


MODES: dict[str, Callable] = {
    "run": run_matrix,
    "soak": modes.soak,
    "idle": modes.idle,
    "scale": modes.scale,
    "profile": profiling.profile,
    "worst": worst.worst,
}


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: every `finally` runs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    command = "python -m bench " + shlex.join(argv)
    cores = Cores.split()
    info = machine()  # before pinning this script, which would change the usable CPU count
    cores.pin_self()
    fd_limit = raise_fd_limit()
    scratch = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    load = LoadGenerator(scratch, cores.load, force_fallback=args.no_wrk)
    header = _header(command, info, cores, load, fd_limit)
    print(header, flush=True)
    try:
        with Processes(scratch) as procs:
            text, data = MODES[args.command](args, procs, cores, load)
    except KeyboardInterrupt:
        print("interrupted: everything the bench started was stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {scratch} (configs and logs)", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(header)
    print(text)
    if args.json:
        meta = {
            "command": command,
            "date": _today(),
            "machine": info,
            "cores": cores.describe(),
            "load_generator": load.name,
        }
        args.json.write_bytes(orjson.dumps({**meta, **data}, option=orjson.OPT_INDENT_2))
        print(f"saved {args.json}")
    return 0


def _today() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def _header(command: str, m: dict[str, str], cores: Cores, load: LoadGenerator, fd_limit: int) -> str:
    return "\n".join(
        [
            f"$ {command}",
            f"date: {_today()}",
            f"machine: {m['cpus']} CPUs ({m['cpus_usable']} usable), {m['cpu_model']}, "
            f"Python {m['python']}, kernel {m['kernel']}",
            f"code: {m['code']}",
            f"cores: {cores.describe()}",
            f"load generator: {load.name}; open files limit {fd_limit}",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
