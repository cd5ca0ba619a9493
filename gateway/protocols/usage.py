"""Token counts as an upstream reports them, made safe to count.

Usage comes from the upstream, and the gateway settles budgets, rate buckets and usage
records with it: a negative count would refund a team's budget, and one past int64 (JSON
has no bound; orjson reads up to 2**64 - 1 as an int and larger as a float) would make
Redis refuse the settlement script half-way, its concurrency lease still held. Every
figure is therefore clamped where it is read (the Chat Completions translation, the
native backend's answer and stream) to [0, MAX_TOKEN_COUNT].
"""

from __future__ import annotations

import math
from typing import Any

# Far past any one request (the longest contexts are ~10M tokens, and `max_tokens` is at
# most 1M), and far below int64: 9 billion such requests add up before a total overflows.
MAX_TOKEN_COUNT = 1_000_000_000

# The figures of a Messages `usage` object that count tokens.
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def token_count(value: Any) -> int:
    """A reported count as the gateway counts it: a whole number in [0, MAX_TOKEN_COUNT];
    anything that is no number (a string, a bool, null) is 0. A count too large to be an
    int in JSON arrives as a float and is clamped like one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if isinstance(value, float):
        if math.isnan(value) or value <= 0:
            return 0
        if value >= MAX_TOKEN_COUNT:
            return MAX_TOKEN_COUNT
        return int(value)
    return min(max(value, 0), MAX_TOKEN_COUNT)


def clamped_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """A Messages `usage` object with its counts clamped (`token_count`) and the rest as it
    came (a null stays null); the same object when nothing needed it."""
    fixed: dict[str, Any] = {name: token_count(usage[name]) for name in TOKEN_FIELDS if _out_of_range(usage.get(name))}
    tools = usage.get("server_tool_use")
    if isinstance(tools, dict) and _out_of_range(tools.get("web_search_requests")):
        fixed["server_tool_use"] = {**tools, "web_search_requests": token_count(tools["web_search_requests"])}
    return {**usage, **fixed} if fixed else usage


def _out_of_range(value: Any) -> bool:
    """A number that is not already a count `token_count` would keep as it is."""
    if type(value) is int:
        return not 0 <= value <= MAX_TOKEN_COUNT
    return isinstance(value, float)
