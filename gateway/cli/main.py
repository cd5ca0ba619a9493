"""`gateway serve | check-config | demo | fake-upstream | teams ... | keys ... | usage`: argument parsing only.

`serve` runs in gateway/server.py, `demo` in gateway/cli/demo.py; the `teams`, `keys` and
`usage` commands run in gateway/cli/accounts.py and print with gateway/cli/output.py.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from gateway.accounts import USAGE_GROUPS
from gateway.cli import accounts as ca
from gateway.config import Config, ConfigError, exposure_problems, host_port, load


def _load_or_exit(path: str) -> Config:
    try:
        return load(path)
    except ConfigError as exc:
        _refuse(path, exc.problems)


def _refuse(path: str, problems: list[str]) -> NoReturn:
    print(f"{path}: {len(problems)} problem(s):", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    sys.exit(1)


def _servable_or_exit(path: str, host: str | None, admin_listen: str | None) -> Config:
    """The config, refused (exit 1) also when a secret is too weak for the addresses it
    would be served on (`config.exposure_problems`)."""
    config = _load_or_exit(path)
    admin_host = host_port(admin_listen)[0] if admin_listen else None
    problems = exposure_problems(config, host, admin_host)
    if problems:
        _refuse(path, problems)
    return config


def _host_port(text: str) -> str:
    try:
        host_port(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be host:port (127.0.0.1:9091; [::1]:9091 for IPv6)") from None
    return text


def _workers(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return value


def _action(actions, name: str, help: str, *, with_id: str | None = None) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=help)
    if with_id:
        parser.add_argument("id", help=with_id)
    parser.add_argument("--config", required=True, help="YAML configuration file (its `store` is used)")
    parser.add_argument("--json", action="store_true", help="print the admin API's JSON instead of a table")
    return parser


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("limits ('none' lifts one)")
    for flag, field in ca.LIMIT_FLAGS.items():
        kind = ca.amount if field == "cost_per_month_usd" else ca.count
        group.add_argument(flag, dest=field, type=kind, default=argparse.SUPPRESS, metavar="N")


def _add_team_fields(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a flag not given is not in the body, so `update` changes only what is named.
    parser.add_argument("--name", default=argparse.SUPPRESS)
    parser.add_argument("--models", type=ca.names, default=argparse.SUPPRESS, help="a,b or wildcards (claude-*)")
    parser.add_argument(
        "--metadata",
        type=ca.metadata_pair,
        action="append",
        default=argparse.SUPPRESS,
        metavar="NAME=VALUE",
        help="repeatable; replaces the team's metadata",
    )
    _add_limit_flags(parser)


def _add_key_fields(parser: argparse.ArgumentParser, *, teams_required: bool) -> None:
    parser.add_argument(
        "--team",
        type=ca.names,
        action="append",
        required=teams_required,
        help="a team the key belongs to (repeatable, or a,b)"
        + ("" if teams_required else "; replaces the key's teams"),
    )
    parser.add_argument(
        "--default-team", dest="default_team", default=argparse.SUPPRESS, help="default: the first --team"
    )
    parser.add_argument("--name", default=argparse.SUPPRESS)
    parser.add_argument("--description", default=argparse.SUPPRESS)
    parser.add_argument("--models", type=ca.names, default=argparse.SUPPRESS, help="narrower than the teams' (a,b)")
    when = parser.add_mutually_exclusive_group()
    when.add_argument(
        "--expires-at",
        dest="expires_at",
        type=ca.expiry,
        default=argparse.SUPPRESS,
        help="Unix seconds, RFC 3339, or never",
    )
    when.add_argument(
        "--expires-in", dest="expires_in", type=ca.duration, default=argparse.SUPPRESS, help="3600, 90m, 12h, 30d"
    )
    _add_limit_flags(parser)


def _add_teams(commands) -> None:
    teams = commands.add_parser("teams", help="manage teams in the configured store (no server needed)")
    actions = teams.add_subparsers(dest="action", required=True)
    _add_team_fields(_action(actions, "create", "create a team", with_id="the team's id"))
    _action(actions, "list", "list teams")
    _action(actions, "show", "show one team", with_id="team id")
    _add_team_fields(_action(actions, "update", "change a team (only the flags given)", with_id="team id"))
    _action(actions, "delete", "delete a team that no active key uses", with_id="team id")


def _add_keys(commands) -> None:
    keys = commands.add_parser("keys", help="manage API keys in the configured store (no server needed)")
    actions = keys.add_subparsers(dest="action", required=True)
    _add_key_fields(_action(actions, "create", "create a key (printed once)"), teams_required=True)
    listing = _action(actions, "list", "list keys (never the keys themselves)")
    listing.add_argument("--team", help="only this team's keys")
    _action(actions, "show", "show one key", with_id="key id")
    _add_key_fields(
        _action(actions, "update", "change a key (only the flags given)", with_id="key id"), teams_required=False
    )
    _action(actions, "revoke", "revoke a key at once (idempotent)", with_id="key id")
    rotate = _action(actions, "rotate", "issue a new key for the same record (printed once)", with_id="key id")
    rotate.add_argument(
        "--grace",
        "--grace-seconds",
        dest="grace",
        type=ca.duration,
        default=0.0,
        help="how long the previous key keeps working: 3600, 90m, 12h, 30d (default 0: stops at once)",
    )


def _add_usage(commands) -> None:
    usage = _action(commands, "usage", "a team's recorded usage per day, key and model (no server needed)")
    usage.add_argument("--team", required=True, help="the team's id")
    usage.add_argument("--since", help="the first day, YYYY-MM-DD (UTC; default: --until)")
    usage.add_argument("--until", help="the last day, YYYY-MM-DD (UTC, inclusive; default: today)")
    usage.add_argument("--by", choices=USAGE_GROUPS, help="sum the rows by one dimension (default: none)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gateway", description="An Anthropic Messages API gateway.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", required=True, help="YAML configuration file")
    serve.add_argument("--host", help="address to listen on (default: server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port)")
    serve.add_argument(
        "--admin-listen",
        type=_host_port,
        metavar="HOST:PORT",
        help="serve /admin and /metrics only on this address (default: server.admin_listen)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--workers",
        type=_workers,
        default=None,
        metavar="N",
        help="processes serving the port (SO_REUSEPORT) under a supervisor; default: one per CPU this "
        "process may use (1 with the memory store, which cannot be shared)",
    )
    # Internal: set by the supervisor on the workers it starts (the pipe they report ready on).
    serve.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)

    check = commands.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file")
    check.add_argument("--host", help="the address `serve --host` will listen on (default: server.host)")
    check.add_argument(
        "--admin-listen",
        type=_host_port,
        metavar="HOST:PORT",
        help="the address `serve --admin-listen` will use (default: server.admin_listen)",
    )

    demo = commands.add_parser(
        "demo", help="run the demo: the scripted upstream and the gateway on the embedded store, in one process"
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")

    fake = commands.add_parser("fake-upstream", help="run the scripted demo upstream (OpenAI and Messages)")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=9099)
    fake.add_argument("--no-record", action="store_true", help="do not keep received requests (for load tests)")

    _add_teams(commands)
    _add_keys(commands)
    _add_usage(commands)

    args = parser.parse_args(argv)
    if args.command == "serve":
        from gateway.server import serve as run
        from gateway.server import setup_logging

        setup_logging(args.log_level)
        config = _servable_or_exit(args.config, args.host, args.admin_listen)
        run(
            config,
            host=args.host,
            port=args.port,
            config_path=args.config,
            workers=args.workers,
            admin_listen=args.admin_listen,
            ready_fd=args.ready_fd,
            log_level=args.log_level,
        )
    elif args.command == "check-config":
        config = _servable_or_exit(args.file, args.host, args.admin_listen)
        print(f"{args.file}: ok ({len(config.backends)} backends, {len(config.models)} models)")
    elif args.command == "demo":
        from gateway.cli.demo import run as run_demo

        run_demo(args.host, args.port)
    elif args.command == "fake-upstream":
        from gateway.fake_upstream import main as fake_main

        fake_main(["--host", args.host, "--port", str(args.port)] + (["--no-record"] if args.no_record else []))
    elif args.command in ("teams", "keys", "usage"):
        sys.exit(ca.main(_load_or_exit(args.config), args))


if __name__ == "__main__":
    main()
