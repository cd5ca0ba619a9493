"""How the `teams`, `keys` and `usage` commands print: aligned tables for people, JSON for scripts.

Pure functions from the admin API's views (`accounts.team_view`, `accounts.key_view`,
`accounts.usage_report`) to text, so what a script reads with `--json` is exactly what
the admin API answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import orjson

# The CLI's own flag names, so what a table shows is what one would type to change it.
LIMIT_LABELS = {
    "requests_per_minute": "rpm",
    "input_tokens_per_minute": "input-tpm",
    "output_tokens_per_minute": "output-tpm",
    "concurrent_requests": "concurrency",
    "tokens_per_day": "tokens-per-day",
    "tokens_per_month": "tokens-per-month",
    "cost_per_month_usd": "cost-per-month",
    "count_tokens_per_minute": "count-tokens-rpm",
}

# A usage report's numbers: field → column header.
USAGE_COLUMNS = {
    "requests": "REQUESTS",
    "input": "INPUT",
    "output": "OUTPUT",
    "cache_read": "CACHE-READ",
    "cache_creation": "CACHE-CREATION",
    "cost": "COST-USD",
}
USAGE_DIMENSIONS = ("day", "key", "model")

NEW_KEY_WARNING = "Store this key now: it will not be shown again (only its prefix is kept)."


def to_json(payload: object) -> str:
    return orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode()


def when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def limits_text(limits: dict) -> str:
    shown = [f"{LIMIT_LABELS.get(name, name)}={value:g}" for name, value in limits.items() if value is not None]
    return " ".join(shown) or "-"


def models_text(models: Sequence[str] | None) -> str:
    return "(team's)" if models is None else ",".join(models) or "(none)"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = [header, *rows]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def details(pairs: Sequence[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in pairs)


# ---------------------------------------------------------------------------- teams


def team_table(teams: Sequence[dict]) -> str:
    if not teams:
        return "no teams"
    rows = [
        (t["id"], t["name"] or "-", models_text(t["models"]), limits_text(t["limits"]), when(t["created_at"]))
        for t in teams
    ]
    return table(("ID", "NAME", "MODELS", "LIMITS", "CREATED"), rows)


def team_details(team: dict) -> str:
    metadata = " ".join(f"{k}={v}" for k, v in sorted(team["metadata"].items())) or "-"
    return details(
        [
            ("id", team["id"]),
            ("name", team["name"] or "-"),
            ("models", models_text(team["models"])),
            ("limits", limits_text(team["limits"])),
            ("metadata", metadata),
            ("created", when(team["created_at"])),
            ("managed by", "the configuration file" if team.get("managed_by") == "config" else "the admin API"),
        ]
    )


# ---------------------------------------------------------------------------- keys


def key_table(keys: Sequence[dict]) -> str:
    if not keys:
        return "no keys"
    rows = [
        (
            k["id"],
            k["name"] or "-",
            k["prefix"] + "…",
            ",".join(k["teams"]),
            k["status"],
            when(k["expires_at"]),
            when(k["last_used_at"]),
            when(k["created_at"]),
        )
        for k in keys
    ]
    return table(("ID", "NAME", "PREFIX", "TEAMS", "STATUS", "EXPIRES", "LAST USED", "CREATED"), rows)


def key_details(key: dict) -> str:
    return details(
        [
            ("id", key["id"]),
            ("name", key["name"] or "-"),
            ("description", key["description"] or "-"),
            ("prefix", key["prefix"] + "…"),
            ("teams", ",".join(key["teams"])),
            ("default team", key["default_team"]),
            ("models", models_text(key["models"])),
            ("limits", limits_text(key["limits"])),
            ("status", key["status"]),
            ("expires", when(key["expires_at"])),
            ("revoked", when(key["revoked_at"])),
            ("rotated", when(key["rotated_at"])),
            ("last used", when(key["last_used_at"])),
            ("created", when(key["created_at"])),
            ("managed by", "the configuration file" if key.get("managed_by") == "config" else "the admin API"),
        ]
    )


def new_key(view: dict, raw: str, *, rotated_until: float | None = None) -> str:
    """The one time a key is printed."""
    lines = [key_details(view), "", f"key  {raw}", ""]
    if rotated_until is not None:
        lines.append(f"The previous key keeps working until {when(rotated_until)}.")
    lines.append(NEW_KEY_WARNING)
    return "\n".join(lines)


# ---------------------------------------------------------------------------- usage


def _usage_numbers(row: dict) -> list[str]:
    return [f"{row[field]:.6f}" if field == "cost" else str(row[field]) for field in USAGE_COLUMNS]


def usage_table(report: dict) -> str:
    """A title, then a row per day, key and model (or per `by`), then the totals."""
    days = report["since"] if report["since"] == report["until"] else f"{report['since']} to {report['until']}"
    title = f"usage of team {report['team']}, {days} (UTC)" + (f", by {report['by']}" if report["by"] else "")
    if not report["rows"]:
        return f"{title}\nno usage recorded"
    dimensions = [report["by"]] if report["by"] else list(USAGE_DIMENSIONS)
    header = [name.upper() for name in dimensions] + list(USAGE_COLUMNS.values())
    rows = [[row[name] for name in dimensions] + _usage_numbers(row) for row in report["rows"]]
    totals = ["TOTAL"] + [""] * (len(dimensions) - 1) + _usage_numbers(report["totals"])
    return f"{title}\n{table(header, [*rows, totals])}"
