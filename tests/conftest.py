"""Options and fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.support import binaries


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="rewrite the expected part of each failing golden fixture from the current output (review the diff!)",
    )


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-goldens"))


# ---------------------------------------------------------------- strict mode (.ci/run)


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # (path, line, "Skipped: reason")
        return str(longrepr[2])
    return str(longrepr)


def _fail_if_missing(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under GATEWAY_TESTS_STRICT=1, a skip for want of something installed fails: a
    skipif mark or a `pytest.skip` / `importorskip` whose reason says it is not installed
    (tests/support/binaries.py)."""
    if not report.skipped or hasattr(report, "wasxfail") or not binaries.strict():
        return
    reason = _skip_reason(report)
    if binaries.says_missing(reason):
        report.outcome = "failed"
        report.longrepr = f"{reason}\n[{binaries.STRICT_ENV}=1: nothing may be skipped for want of it]"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_if_missing(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _fail_if_missing(report)
    return report


# ---------------------------------------------------------------- redis


@pytest.fixture(scope="session")
def redis_server():
    """A private redis-server for the whole run (never the one a developer may have on 6379)."""
    from tests.support.redis_server import RedisServer

    binaries.require("redis-server", "apt-get install redis-server; the Redis tests need a real one")
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server) -> str:
    """The private server's URL, emptied first so each test starts from nothing."""
    redis_server.flushall()
    return redis_server.url
