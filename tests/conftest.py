"""Options and fixtures shared by every test directory."""

from __future__ import annotations

import pytest


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


# ---------------------------------------------------------------- redis


@pytest.fixture(scope="session")
def redis_server():
    """A private redis-server for the whole run (never the one a developer may have on 6379)."""
    from tests.support.redis_server import RedisServer, redis_server_path

    if redis_server_path() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); the Redis tests need a real one")
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server) -> str:
    """The private server's URL, emptied first so each test starts from nothing."""
    redis_server.flushall()
    return redis_server.url
