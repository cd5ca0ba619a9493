"""The limiter's pure arithmetic (`gateway/limiter/rules.py`, the header and 429 builders
in `gateway/limiter/base.py`): GCRA buckets, the UTC calendar, settlement corrections."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import pytest

from gateway.errors import InvalidRequest, RateLimited
from gateway.identity import ApiKey, Limits, Team
from gateway.limiter.base import (
    COUNT_TOKENS,
    Demand,
    Usage,
    Window,
    rate_limit_headers,
    rejection,
    retry_after_header,
    rfc3339,
)
from gateway.limiter.rules import (
    Calendar,
    calendar,
    charged_for,
    checks_for,
    civil_from_days,
    corrections,
    days_from_civil,
    divided,
    gcra_admit,
    gcra_correct,
    has_limits,
    pick_failure,
    team_windows,
    tightest,
    usage_days,
    usage_rows,
    window,
)

NOW = 1_750_000_000.0


# ---------------------------------------------------------------- GCRA


def test_a_full_bucket_takes_its_capacity_at_once_then_refuses():
    tat = None
    for _ in range(50):
        ok, tat, _ = gcra_admit(tat, NOW, 50, 1)
        assert ok
    ok, same, retry = gcra_admit(tat, NOW, 50, 1)
    assert not ok and same == tat
    assert retry == pytest.approx(1.2, abs=1e-4)  # one request refills every 60/50 s


def test_the_bucket_refills_continuously():
    tat = None
    for _ in range(50):
        _, tat, _ = gcra_admit(tat, NOW, 50, 1)
    assert not gcra_admit(tat, NOW + 1.1, 50, 1)[0]
    assert gcra_admit(tat, NOW + 1.2, 50, 1)[0]
    # No double burst at a boundary: after 30 s exactly half the capacity is back.
    admitted = 0
    while gcra_admit(tat, NOW + 30, 50, 1)[0]:
        _, tat, _ = gcra_admit(tat, NOW + 30, 50, 1)
        admitted += 1
    assert admitted == 25


def test_a_bucket_at_rest_is_full_whatever_its_old_tat():
    ok, tat, _ = gcra_admit(NOW - 3600, NOW, 10, 10)
    assert ok and tat == pytest.approx(NOW + 60)


def test_a_cost_capped_at_the_capacity_passes_a_full_bucket_and_settlement_puts_it_in_debt():
    ok, tat, _ = gcra_admit(None, NOW, 1000, min(5000, 1000))
    assert ok
    tat = gcra_correct(tat, NOW, 1000, 5000 - 1000)  # the rest, charged at settlement
    assert tat == pytest.approx(NOW + 300)
    ok, _, retry = gcra_admit(tat, NOW, 1000, 1)
    assert not ok and retry == pytest.approx(240.06, abs=1e-4)
    # Even a zero-cost request waits while the bucket is in debt.
    assert not gcra_admit(tat, NOW + 200, 1000, 0)[0]
    assert gcra_admit(tat, NOW + 240, 1000, 0)[0]


def test_a_refund_never_takes_a_bucket_past_full():
    _, tat, _ = gcra_admit(None, NOW, 600, 600)
    assert gcra_correct(tat, NOW, 600, -300) == pytest.approx(NOW + 30)
    assert gcra_correct(tat, NOW, 600, -100_000) == NOW
    assert gcra_correct(None, NOW, 600, -5) == NOW
    # A charge lands on the bucket as it is now, not on a tat long past.
    assert gcra_correct(NOW - 500, NOW, 600, 60) == pytest.approx(NOW + 6)


def test_window_reports_whole_units_left_and_seconds_until_full():
    assert window(50, None, NOW) == Window(limit=50, remaining=50, reset_seconds=0.0)
    w = window(50, NOW + 1.2 * 49, NOW)
    assert (w.limit, w.remaining) == (50, 1) and w.reset_seconds == pytest.approx(58.8)
    assert window(50, NOW + 300, NOW).remaining == 0  # in debt
    assert window(0, None, NOW) == Window(0, 0, 0.0)


def test_tightest_is_the_window_with_fewer_remaining():
    a, b = Window(1000, 10, 5.0), Window(100, 50, 30.0)
    assert tightest(a, b) is a and tightest(b, a) is a
    assert tightest(None, b) is b and tightest(a, None) is a
    assert tightest(Window(10, 0, 5.0), Window(10, 0, 9.0)).reset_seconds == 9.0


# ---------------------------------------------------------------- calendar


def test_civil_from_days_matches_the_proleptic_gregorian_calendar():
    epoch = date(1970, 1, 1)
    for days in range(-140_000, 120_000, 7):
        expected = epoch + timedelta(days=days)
        assert civil_from_days(days) == (expected.year, expected.month, expected.day)
        assert days_from_civil(expected.year, expected.month, expected.day) == days


@pytest.mark.parametrize(
    "instant, day, month, next_day, next_month",
    [
        ("2024-02-28T23:59:59", "2024-02-28", "2024-02", "2024-02-29", "2024-03-01"),
        ("2024-02-29T00:00:00", "2024-02-29", "2024-02", "2024-03-01", "2024-03-01"),
        ("2025-02-28T12:00:00", "2025-02-28", "2025-02", "2025-03-01", "2025-03-01"),
        ("2025-12-31T23:59:59.999", "2025-12-31", "2025-12", "2026-01-01", "2026-01-01"),
        ("2026-01-01T00:00:00", "2026-01-01", "2026-01", "2026-01-02", "2026-02-01"),
        ("2100-02-28T05:00:00", "2100-02-28", "2100-02", "2100-03-01", "2100-03-01"),
    ],
)
def test_calendar_labels_and_resets(instant, day, month, next_day, next_month):
    now = datetime.fromisoformat(instant).replace(tzinfo=UTC).timestamp()
    cal = calendar(now)
    midnight = lambda label: datetime.fromisoformat(label).replace(tzinfo=UTC).timestamp()  # noqa: E731
    assert cal == Calendar(day=day, month=month, next_day=midnight(next_day), next_month=midnight(next_month))


def test_usage_days_are_inclusive_and_checked():
    assert usage_days("2024-02-27", "2024-03-01") == ["2024-02-27", "2024-02-28", "2024-02-29", "2024-03-01"]
    assert usage_days("2025-01-01", "2025-01-01") == ["2025-01-01"]
    for since, until in [("2025-02-30", "2025-03-01"), ("2025-1-01", "2025-01-02"), ("x", "2025-01-01")]:
        with pytest.raises(InvalidRequest):
            usage_days(since, until)
    with pytest.raises(InvalidRequest, match="before"):
        usage_days("2025-01-02", "2025-01-01")
    with pytest.raises(InvalidRequest, match="at most"):
        usage_days("2020-01-01", "2025-01-01")


# ---------------------------------------------------------------- checks and settlement


def demand(team_limits: Limits, key_limits: Limits | None = None, **fields) -> Demand:
    fields.setdefault("input_tokens", 100)
    fields.setdefault("output_tokens", 200)
    return Demand(
        team=Team(id="a", limits=team_limits),
        key=ApiKey(id="k1", prefix="gk-", hash="h", teams=("a",), default_team="a", limits=key_limits or Limits()),
        model="m",
        **fields,
    )


def test_checks_cover_team_then_key_and_cap_token_costs():
    d = demand(
        Limits(requests_per_minute=5, input_tokens_per_minute=50, concurrent_requests=2, tokens_per_day=1000),
        Limits(output_tokens_per_minute=1000, cost_per_month_usd=2.5),
        cost_usd=0.3,
        input_cost_usd=0.1,
    )
    checks = checks_for(d)
    assert [(c.kind, c.name, c.limit, c.cost, c.need, c.scope) for c in checks] == [
        ("rate", "rpm", 5, 1, 0, "team"),
        ("rate", "itpm", 50, 50, 0, "team"),  # 100 estimated, capped at the capacity
        ("conc", "conc", 2, 1, 0, "team"),
        ("day", "tpd", 1000, 300, 100, "team"),
        ("rate", "k:k1:otpm", 1000, 200, 0, "key"),
        ("month", "k:k1:cpmo", 2.5, 0.3, 0.1, "key"),
    ]
    cal = calendar(NOW)
    charged = charged_for(checks, cal)
    assert charged == {
        "rpm": ("requests", 1, 5),
        "itpm": ("input", 50, 50),
        "conc": ("lease",),
        f"tpd:{cal.day}": ("tokens", 300),
        "k:k1:otpm": ("output", 200, 1000),
        f"k:k1:cpmo:{cal.month}": ("cost", 0.3),
    }
    usage = Usage(
        input_tokens=40, cache_read_input_tokens=50, cache_creation_input_tokens=10, output_tokens=150, cost_usd=0.25
    )
    ops = corrections(charged, usage)
    assert ("zrem", "conc", 0) in ops
    assert ("tat", "itpm", pytest.approx((100 - 50) * 60 / 50)) in ops  # all input counts: 40 + 50 + 10
    assert ("tat", "k:k1:otpm", pytest.approx((150 - 200) * 60 / 1000)) in ops
    assert ("add", f"tpd:{cal.day}", 250 - 300) in ops
    assert ("add", f"k:k1:cpmo:{cal.month}", pytest.approx(0.25 - 0.3)) in ops
    assert not any(name == "rpm" for _, name, _ in ops)  # a request is a request
    assert not has_limits(demand(Limits())) and has_limits(demand(Limits(), Limits(tokens_per_day=0)))


def test_team_windows_only_for_limited_dimensions():
    checks = checks_for(demand(Limits(requests_per_minute=10), Limits(input_tokens_per_minute=100)))
    windows = team_windows(checks, {"rpm": NOW + 6}, NOW)
    assert set(windows) == {"requests"}  # the key's limits are not the team's headers
    checks = checks_for(demand(Limits(input_tokens_per_minute=1000, output_tokens_per_minute=100)))
    windows = team_windows(checks, {"itpm": NOW + 6, "otpm": NOW + 30}, NOW)
    assert windows["tokens"] == windows["output-tokens"] == Window(100, 50, 30.0)


def test_count_tokens_checks_its_own_bucket_only():
    both = Limits(requests_per_minute=10, tokens_per_day=1000, count_tokens_per_minute=30)
    assert [(c.name, c.limit, c.cost) for c in checks_for(demand(both, operation=COUNT_TOKENS))] == [("ctpm", 30, 1)]
    assert "ctpm" not in {c.name for c in checks_for(demand(both))}  # nor a messages request the count's
    # A team that sets none gets the default; a key's narrows it.
    keyed = demand(Limits(), Limits(count_tokens_per_minute=2), operation=COUNT_TOKENS)
    assert [(c.name, c.limit, c.scope) for c in checks_for(keyed, 300)] == [
        ("ctpm", 300, "team"),
        ("k:k1:ctpm", 2, "key"),
    ]
    assert checks_for(demand(Limits(), operation=COUNT_TOKENS), None) == []
    assert has_limits(demand(Limits(), operation=COUNT_TOKENS), 300)
    assert not has_limits(demand(Limits(), operation=COUNT_TOKENS), None)
    assert not has_limits(demand(Limits(count_tokens_per_minute=5)))  # a messages request has none
    checks = checks_for(demand(Limits(count_tokens_per_minute=30), operation=COUNT_TOKENS))
    assert team_windows(checks, {"ctpm": NOW + 4}, NOW) == {"requests": Window(30, 28, 4.0)}


def test_pick_failure_prefers_the_longest_wait_and_never_most():
    assert pick_failure([(0, 1.0), (1, 30.0), (2, 5.0)]) == (1, 30.0)
    assert pick_failure([(0, 1.0), (1, None), (2, 5000.0)]) == (1, None)
    assert pick_failure([(3, 2.0), (1, 2.0)]) == (1, 2.0)


def test_usage_rows_parse_fields():
    rows = usage_rows(
        "2025-01-01",
        {"k1|claude|x|requests": "2", "k1|claude|x|input": "10", "k1|claude|x|cost": "0.5", "k0|m|output": "3"},
    )
    assert rows[0] == {
        "day": "2025-01-01",
        "key": "k0",
        "model": "m",
        "requests": 0,
        "input": 0,
        "output": 3,
        "cache_read": 0,
        "cache_creation": 0,
        "cost": 0.0,
    }
    assert rows[1]["model"] == "claude|x" and rows[1]["requests"] == 2 and rows[1]["cost"] == 0.5


def test_divided_limits_for_the_fallback():
    limits = Limits(requests_per_minute=10, concurrent_requests=3, tokens_per_day=0, cost_per_month_usd=5.0)
    share = divided(limits, 4)
    assert share == Limits(requests_per_minute=2, concurrent_requests=1, tokens_per_day=0, cost_per_month_usd=1.25)
    assert divided(limits, 1) is limits


# ---------------------------------------------------------------- headers and the 429


def test_rate_limit_headers():
    headers = rate_limit_headers({"requests": Window(50, 49, 1.2), "tokens": Window(1000, 0, 0.0)}, now=NOW)
    assert headers == {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": rfc3339(NOW + 2),
        "anthropic-ratelimit-tokens-limit": "1000",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": rfc3339(NOW),
    }
    assert rfc3339(0.5) == "1970-01-01T00:00:01Z" and rfc3339(86400) == "1970-01-02T00:00:00Z"
    assert [retry_after_header(s) for s in (0.0, 0.3, 1.0, 1.2, 59.99)] == ["1", "1", "1", "2", "60"]


def test_a_rate_rejection_names_the_limit_and_scope():
    error = rejection(
        limit="requests_per_minute",
        scope="key",
        value=3,
        team="a",
        key="k1",
        retry_after=2.5,
        now=NOW,
        windows={"requests": Window(100, 7, 3.0)},
    )
    assert isinstance(error, RateLimited) and error.status == 429
    assert "requests_per_minute" in error.message and "key 'k1' in team 'a'" in error.message
    assert error.headers["retry-after"] == "3" and "x-should-retry" not in error.response_headers()
    assert error.headers["anthropic-ratelimit-requests-remaining"] == "7"


def test_a_budget_rejection_says_when_it_resets_and_not_to_retry():
    reset = calendar(NOW).next_day
    error = rejection(
        limit="tokens_per_day",
        scope="team",
        value=1000,
        team="a",
        key="k1",
        retry_after=reset - NOW,
        now=NOW,
        windows={},
    )
    assert rfc3339(reset) in error.message and "tokens_per_day" in error.message
    assert error.headers["retry-after"] == str(math.ceil(reset - NOW))
    assert error.response_headers()["x-should-retry"] == "false"
    assert error.resets_at == reset
    soon = rejection(
        limit="tokens_per_day", scope="team", value=1000, team="a", key="k1", retry_after=30, now=NOW, windows={}
    )
    assert "x-should-retry" not in soon.headers


def test_a_zero_limit_is_never_worth_a_retry():
    error = rejection(
        limit="requests_per_minute", scope="team", value=0, team="a", key="k1", retry_after=None, now=NOW, windows={}
    )
    assert error.retry_after is None and error.headers["x-should-retry"] == "false"
    assert int(error.headers["retry-after"]) >= 1 and "is 0" in error.message
