"""Usage per team, key and model per day, read back the two ways operators read it: the
admin API (`GET /admin/usage`) and `gateway usage` (`python -m gateway` in a subprocess,
with no gateway running behind it).

The real app on a real Redis, with the fake upstream scripted to report known usage for
two keys and two models (one translated to Chat Completions, one native), streamed and
not, with cache tokens and per-model prices; what both front ends report must be those
exact sums, per row, per grouping and in total. Another team's traffic must not show.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from gateway.identity import hash_key, key_id_for_hash
from gateway.protocols.usage import MAX_TOKEN_COUNT
from gateway.runtime import RUNTIME
from tests.support.replies import chat_chunks, chat_message, native_message, native_stream
from tests.support.servers import start_gateway

ROOT = Path(__file__).resolve().parent.parent.parent
ADMIN_TOKEN = "admin-token-for-usage-0001"
FIRST, SECOND = "usage-key-0001", "usage-key-0002"
KEY_IDS = {FIRST: key_id_for_hash(hash_key(FIRST)), SECOND: key_id_for_hash(hash_key(SECOND))}
# USD per million tokens: input, output, cache read, cache write.
PRICES = {"chat-model": (3.0, 15.0, 0.3, 3.75), "native-model": (1.0, 5.0, 0.1, 1.25)}
NUMBERS = ("requests", "input", "output", "cache_read", "cache_creation", "cost")


def config(upstream_url: str, redis_url: str) -> str:
    def pricing(model: str) -> str:
        per_input, per_output, per_read, per_write = PRICES[model]
        return (
            f"{{input_per_mtok: {per_input}, output_per_mtok: {per_output}, "
            f"cache_read_per_mtok: {per_read}, cache_write_per_mtok: {per_write}}}"
        )

    return f"""
store: {{type: redis, url: '{redis_url}'}}
admin: {{token: {ADMIN_TOKEN}}}
teams:
  - id: usage
    keys:
      - {{name: first, key: {FIRST}}}
      - {{name: second, key: {SECOND}}}
  - id: other
    keys: [{{name: other, key: other-key-0001}}]
backends:
  chat: {{type: openai, base_url: '{upstream_url}/v1', api_key: upstream-chat-key, preset: vllm}}
  native: {{type: anthropic, base_url: '{upstream_url}', api_key: upstream-native-key}}
models:
  - name: chat-model
    routes: [{{backend: chat, model: upstream-chat-model}}]
    pricing: {pricing("chat-model")}
  - name: native-model
    routes: [{{backend: native, model: upstream-native-model}}]
    pricing: {pricing("native-model")}
"""


# (key, model, streamed, what the upstream reports, as the gateway counts it:
# input (uncached), output, cache read, cache creation)
TRAFFIC = [
    (FIRST, "chat-model", False, (100, 10, 0, 0)),
    (FIRST, "chat-model", True, (200, 20, 0, 0)),
    (FIRST, "chat-model", False, (70, 5, 30, 0)),  # 100 prompt tokens, 30 of them cached
    (FIRST, "native-model", False, (50, 7, 11, 13)),
    (SECOND, "chat-model", True, (300, 33, 0, 0)),
    (SECOND, "native-model", False, (40, 4, 0, 9)),
    (SECOND, "native-model", False, (41, 6, 17, 0)),
    ("other-key-0001", "chat-model", False, (999, 99, 0, 0)),  # another team: not in the report
]


def reply(model: str, streamed: bool, counts: tuple[int, int, int, int]) -> dict:
    uncached, output, read, written = counts
    if model == "native-model":
        usage = {
            "input_tokens": uncached,
            "output_tokens": output,
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": written,
        }
        return native_message([{"type": "text", "text": "native"}], usage=usage)
    usage = {"prompt_tokens": uncached + read, "completion_tokens": output, "total_tokens": uncached + read + output}
    if read:
        usage["prompt_tokens_details"] = {"cached_tokens": read}
    if streamed:
        return {"sse": chat_chunks({"content": "streamed"}, usage=usage)}
    return chat_message("chat", usage=usage)


def cost(model: str, counts: tuple[int, int, int, int]) -> float:
    return sum(n * price for n, price in zip(counts, PRICES[model], strict=True)) / 1e6


def expected_rows() -> dict[tuple[str, str], dict]:
    """(key id, model) → the sums the gateway must have recorded for team `usage`."""
    rows: dict[tuple[str, str], dict] = {}
    for key, model, _, counts in TRAFFIC:
        if key not in KEY_IDS:
            continue
        row = rows.setdefault((KEY_IDS[key], model), dict.fromkeys(NUMBERS, 0))
        row["requests"] += 1
        for field, n in zip(NUMBERS[1:5], counts, strict=True):
            row[field] += n
        row["cost"] += cost(model, counts)
    return rows


def summed(rows: list[dict]) -> dict:
    return {field: sum(row[field] for row in rows) for field in NUMBERS}


def assert_numbers(got: dict, want: dict) -> None:
    assert {f: got[f] for f in NUMBERS[:5]} == {f: want[f] for f in NUMBERS[:5]}
    assert got["cost"] == pytest.approx(want["cost"], abs=1e-9)


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def day_before(day: str, days: int = 1) -> str:
    return (datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC) - timedelta(days=days)).strftime("%Y-%m-%d")


class Used:
    def __init__(self, url: str, config_file: Path) -> None:
        self.url, self.config_file = url, config_file

    async def admin(self, http: aiohttp.ClientSession, **query: str) -> tuple[int, dict]:
        async with http.get(
            f"{self.url}/admin/usage", params=query, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as response:
            return response.status, await response.json()

    def cli(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "gateway", "usage", *args, "--config", str(config or self.config_file)]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)

    async def cli_json(self, *args: str) -> dict:
        result = await asyncio.to_thread(self.cli, *args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture
async def used(upstream, redis_url, tmp_path):
    """A gateway whose team `usage` has made TRAFFIC's requests, every one settled."""
    text = config(upstream.url, redis_url)
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(text)
    running = await start_gateway(text)
    try:
        async with aiohttp.ClientSession() as http:
            for key, model, streamed, counts in TRAFFIC:  # in order: each request meets its own reply
                upstream.script(reply(model, streamed, counts))
                body = {
                    "model": model,
                    "max_tokens": 50,
                    "stream": streamed,
                    "messages": [{"role": "user", "content": "hi"}],
                }
                async with http.post(f"{running.url}/v1/messages", json=body, headers={"x-api-key": key}) as response:
                    assert response.status == 200, await response.text()
                    await response.read()
        await running.app[RUNTIME].admission.drain()  # settlement runs in the background
        yield Used(running.url, config_file)
    finally:
        await running.runner.cleanup()


async def test_the_admin_api_reports_the_exact_sums(used):
    want = expected_rows()
    day = today()
    async with aiohttp.ClientSession() as http:
        status, report = await used.admin(http, team="usage")
        assert status == 200, report
        assert (report["team"], report["since"], report["until"], report["by"]) == ("usage", day, day, None)
        assert [(row["day"], row["key"], row["model"]) for row in report["rows"]] == [
            (day, key, model) for key, model in sorted(want)
        ]
        for row in report["rows"]:
            assert_numbers(row, want[(row["key"], row["model"])])
        assert_numbers(report["totals"], summed(list(want.values())))
        assert report["totals"]["requests"] == 7 and report["totals"]["cache_read"] == 11 + 30 + 17
        assert FIRST not in json.dumps(report) and SECOND not in json.dumps(report)  # ids, never keys

        status, by_key = await used.admin(http, team="usage", by="key")
        assert status == 200 and by_key["by"] == "key"
        assert [sorted(row) for row in by_key["rows"]] == [sorted(("key", *NUMBERS))] * 2  # no other dimension
        for row in by_key["rows"]:
            assert_numbers(row, summed([r for (k, _), r in want.items() if k == row["key"]]))
        assert [row["key"] for row in by_key["rows"]] == sorted(KEY_IDS.values())

        status, by_model = await used.admin(http, team="usage", by="model")
        assert status == 200 and [row["model"] for row in by_model["rows"]] == ["chat-model", "native-model"]
        for row in by_model["rows"]:
            assert_numbers(row, summed([r for (_, m), r in want.items() if m == row["model"]]))

        # A window: days with nothing recorded have no rows; `by: day` sums the rest.
        status, by_day = await used.admin(http, team="usage", since=day_before(day, 3), until=day, by="day")
        assert status == 200 and (by_day["since"], by_day["until"]) == (day_before(day, 3), day)
        assert [row["day"] for row in by_day["rows"]] == [day]
        assert_numbers(by_day["rows"][0], summed(list(want.values())))
        assert by_day["totals"] == report["totals"]

        status, earlier = await used.admin(http, team="usage", since=day_before(day, 2), until=day_before(day))
        assert status == 200 and earlier["rows"] == [] and earlier["totals"] == dict.fromkeys(NUMBERS, 0)
        status, other = await used.admin(http, team="other")
        assert status == 200 and other["totals"]["input"] == 999


async def test_the_cli_reports_what_the_admin_api_does(used):
    day = today()
    async with aiohttp.ClientSession() as http:
        answers = [await used.admin(http, team="usage", **extra) for extra in ({}, {"by": "model"})]
    plain, by_model, table, model_table = await asyncio.gather(
        used.cli_json("--team", "usage"),
        used.cli_json("--team", "usage", "--by", "model", "--since", day, "--until", day),
        asyncio.to_thread(used.cli, "--team", "usage"),
        asyncio.to_thread(used.cli, "--team", "usage", "--by", "model"),
    )
    assert [plain, by_model] == [answer for _, answer in answers]

    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == f"usage of team usage, {day} (UTC)"
    assert lines[1].split() == [
        "DAY",
        "KEY",
        "MODEL",
        *("REQUESTS INPUT OUTPUT CACHE-READ CACHE-CREATION COST-USD".split()),
    ]
    want = expected_rows()
    for line, (key, model) in zip(lines[2:-1], sorted(want), strict=True):
        row = want[(key, model)]
        assert line.split() == [day, key, model, *(str(row[f]) for f in NUMBERS[:5]), f"{row['cost']:.6f}"]
    total = summed(list(want.values()))
    assert lines[-1].split() == ["TOTAL", *(str(total[f]) for f in NUMBERS[:5]), f"{total['cost']:.6f}"]
    # Aligned: the totals' numbers start under their headers.
    assert lines[-1].index(str(total["requests"])) == lines[1].index("REQUESTS")

    assert model_table.returncode == 0, model_table.stderr
    lines = model_table.stdout.splitlines()
    assert lines[0] == f"usage of team usage, {day} (UTC), by model"
    assert [line.split()[0] for line in lines[1:]] == ["MODEL", "chat-model", "native-model", "TOTAL"]


async def test_bad_input_is_refused_by_name(used, tmp_path):
    day = today()
    mistakes = [
        ({}, 400, "team: required"),
        ({"team": "usage", "since": "2025-13-01"}, 400, "since: expected a day as YYYY-MM-DD"),
        ({"team": "usage", "until": "20250601"}, 400, "until: expected a day as YYYY-MM-DD"),
        ({"team": "usage", "since": day, "until": day_before(day)}, 400, f"since: {day} is after until"),
        ({"team": "usage", "since": day_before(day, 400), "until": day}, 400, "at most 400"),
        ({"team": "usage", "by": "team"}, 400, "by: expected one of day, key, model"),
        ({"team": "usage", "teem": "x"}, 400, "unknown query parameter(s): teem"),
        ({"team": "nobody"}, 404, "no team 'nobody'"),
    ]
    async with aiohttp.ClientSession() as http:
        for query, status, says in mistakes:
            got, body = await used.admin(http, **query)
            assert got == status, (query, body)
            assert says in body["error"]["message"], (query, body)
        got, _ = await used.admin(http, team="usage", since=day_before(day, 399), until=day)
        assert got == 200  # 400 days, the longest window

    memory = tmp_path / "memory.yaml"
    memory.write_text("store: {type: memory}\n")
    runs = await asyncio.gather(
        asyncio.to_thread(used.cli, "--team", "nobody"),
        asyncio.to_thread(used.cli, "--team", "usage", "--since", "yesterday"),
        asyncio.to_thread(used.cli, "--team", "usage", config=memory),
    )
    for result, says in zip(
        runs, ["no team 'nobody'", "since: expected a day as YYYY-MM-DD", "in-memory"], strict=True
    ):
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("gateway usage: ") and says in result.stderr, result.stderr


# ---------------------------------------------------------------- usage an upstream made up

HOSTILE_KEY = "hostile-key-0001"
# What an upstream reports (input, output) → what the gateway counts. A security review:
# a negative count refunded the team's budget; one past int64 (2**64 - 1 is still an int
# to orjson, 2**70 a float) made Redis refuse the settlement script half-way, so the
# request's concurrency slot stayed held until its lease ran out.
HOSTILE = {
    "negative": ((-(10**6), -(10**6)), (0, 0)),
    "past_int64": ((2**70, 2**64 - 1), (MAX_TOKEN_COUNT, MAX_TOKEN_COUNT)),
}


def hostile_config(upstream_url: str, redis_url: str) -> str:
    return f"""
store: {{type: redis, url: '{redis_url}'}}
teams:
  - id: hostile
    limits: {{concurrent_requests: 1, tokens_per_day: {10**15}}}
    keys: [{{name: hostile, key: {HOSTILE_KEY}}}]
backends:
  chat: {{type: openai, base_url: '{upstream_url}/v1', preset: vllm}}
  native: {{type: anthropic, base_url: '{upstream_url}'}}
models:
  - name: chat-model
    routes: [{{backend: chat, model: upstream-chat-model}}]
  - name: native-model
    routes: [{{backend: native, model: upstream-native-model}}]
"""


def raw_reply(model: str, streamed: bool, input_tokens: int, output_tokens: int) -> dict:
    """The upstream's answer reporting these counts, written as JSON text (orjson, which the
    scripted upstream encodes with, refuses integers past 64 bits)."""
    if model == "native-model":
        usage = {"input_tokens": input_tokens, "output_tokens": output_tokens}
        if streamed:
            return {"sse": [_sse(item) for item in native_stream("made up", usage=usage)]}
        message = native_message([{"type": "text", "text": "made up"}], usage=usage)["json"]
    else:
        usage = {"prompt_tokens": input_tokens, "completion_tokens": output_tokens, "total_tokens": 0}
        if streamed:
            return {"sse": [_sse(item) for item in chat_chunks({"content": "made up"}, usage=usage)]}
        message = chat_message("made up", usage=usage)["json"]
    return {"body": json.dumps(message), "headers": {"content-type": "application/json"}}


def _sse(item: dict | str) -> str:
    if isinstance(item, str):
        return item
    if "event" in item:
        return f"event: {item['event']}\ndata: {json.dumps(item['data'])}\n\n"
    return f"data: {json.dumps(item)}\n\n"


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("model", ["chat-model", "native-model"])
@pytest.mark.parametrize("case", HOSTILE)
async def test_usage_an_upstream_made_up_is_clamped_before_settlement(upstream, redis_url, case, model, streamed):
    (reported_in, reported_out), (counted_in, counted_out) = HOSTILE[case]
    running = await start_gateway(hostile_config(upstream.url, redis_url))
    counter = f"{{gw:t:hostile}}:tpd:{today()}"
    raw = Redis.from_url(redis_url)
    body = {"model": model, "max_tokens": 50, "stream": streamed, "messages": [{"role": "user", "content": "hi"}]}

    async def ask() -> tuple[int, bytes]:
        async with http.post(f"{running.url}/v1/messages", json=body, headers={"x-api-key": HOSTILE_KEY}) as response:
            return response.status, await response.read()

    try:
        async with aiohttp.ClientSession() as http:
            upstream.script(raw_reply(model, streamed, 100, 10))
            assert (await ask())[0] == 200
            await running.app[RUNTIME].admission.drain()
            assert float(await raw.get(counter)) == 110

            upstream.script(raw_reply(model, streamed, reported_in, reported_out))
            status, answer = await ask()
            assert status == 200
            if not streamed:  # the client is told the counts the team was charged
                usage = json.loads(answer)["usage"]
                assert (usage["input_tokens"], usage["output_tokens"]) == (counted_in, counted_out)
            await running.app[RUNTIME].admission.drain()

            # Its slot is free again (concurrent_requests: 1): the settlement ran to its end.
            upstream.script(raw_reply(model, streamed, 100, 10))
            status, answer = await ask()
            assert status == 200, answer
            await running.app[RUNTIME].admission.drain()
            # Never a refund; a made-up giant is charged as the most one request may use.
            assert float(await raw.get(counter)) == 220 + counted_in + counted_out
            [row] = await running.app[RUNTIME].admission.limiter.usage("hostile", today(), today())
            assert (row["requests"], row["input"], row["output"]) == (3, 200 + counted_in, 20 + counted_out)

            await running.settled()
            async with http.get(f"{running.url}/metrics") as response:
                families = {family.name: family for family in text_string_to_metric_families(await response.text())}
            tokens = {
                s.labels["token_type"]: s.value
                for s in families["gateway_tokens"].samples
                if s.name == "gateway_tokens_total" and s.labels["team"] == "hostile"
            }
            assert (tokens["input"], tokens["output"]) == (200 + counted_in, 20 + counted_out)
    finally:
        await raw.aclose()
        await running.runner.cleanup()
