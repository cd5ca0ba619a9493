"""`gateway serve | check-config | fake-upstream`: argument parsing only."""

from __future__ import annotations

import argparse
import sys

from gateway.config import ConfigError, load


def _load_or_exit(path: str):
    try:
        return load(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gateway", description="An Anthropic Messages API gateway.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", required=True, help="YAML configuration file")
    serve.add_argument("--host", help="address to listen on (default: server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    check = commands.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file")

    fake = commands.add_parser("fake-upstream", help="run the scripted demo upstream (OpenAI and Messages)")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=9099)
    fake.add_argument("--no-record", action="store_true", help="do not keep received requests (for load tests)")

    args = parser.parse_args(argv)
    if args.command == "serve":
        from gateway.server import serve as run
        from gateway.server import setup_logging

        setup_logging(args.log_level)
        run(_load_or_exit(args.config), host=args.host, port=args.port)
    elif args.command == "check-config":
        config = _load_or_exit(args.file)
        print(f"{args.file}: ok ({len(config.backends)} backends, {len(config.models)} models)")
    elif args.command == "fake-upstream":
        from gateway.fake_upstream import main as fake_main

        fake_main(["--host", args.host, "--port", str(args.port)] + (["--no-record"] if args.no_record else []))


if __name__ == "__main__":
    main()
