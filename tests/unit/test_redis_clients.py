"""The `store:` section's three Redis shapes: what the YAML accepts and refuses (each
problem at its dotted path, never quoting a secret), and the client each builds (checked
on the client objects: nothing is connected here; the tests that talk to real servers
are in tests/contract and tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedSSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.config import ConfigError, RedisStoreConfig, host_port, parse
from gateway.limiter.redis import MAX_CONNECTIONS, profile
from gateway.redis.clients import Profile, connect
from gateway.store.redis import profile as store_profile

SECRET = "s3cr3t-Pa55"
# The store's client with the default settings.
STORE = store_profile(RedisStoreConfig(type="redis", url="redis://redis.internal:6379/0"))


def store_section(text: str, env: dict[str, str] | None = None) -> RedisStoreConfig:
    config = parse("store: " + text, env=env or {})
    assert isinstance(config.store, RedisStoreConfig)
    return config.store


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse("store: " + text, env={})
    return caught.value.problems


# ---------------------------------------------------------------- the YAML


def test_the_three_shapes_parse() -> None:
    single = store_section("{type: redis, url: 'rediss://gw:${P}@redis.internal:6380/2'}", {"P": SECRET})
    assert single.mode == "standalone" and single.url.get_secret_value().endswith("@redis.internal:6380/2")

    cluster = store_section(
        "{type: redis, mode: cluster, nodes: ['redis-0:6379', '[::1]:7000'], "
        "username: gw, password: '${P}', tls: true}",
        {"P": SECRET},
    )
    assert (cluster.mode, cluster.nodes, cluster.username, cluster.tls) == (
        "cluster",
        ["redis-0:6379", "[::1]:7000"],
        "gw",
        True,
    )
    assert cluster.password.get_secret_value() == SECRET

    sentinel = store_section(
        """
  type: redis
  mode: sentinel
  sentinels: [sentinel-0:26379, sentinel-1:26379]
  service: mymaster
  password: ${P}
  sentinel_password: ${SP}
  db: 3
""",
        {"P": SECRET, "SP": "other"},
    )
    assert (sentinel.sentinels, sentinel.service, sentinel.db) == (
        ["sentinel-0:26379", "sentinel-1:26379"],
        "mymaster",
        3,
    )
    assert SECRET not in repr(single) + repr(cluster) + repr(sentinel)


def test_host_port() -> None:
    assert host_port("redis-0.internal:6379") == ("redis-0.internal", 6379)
    assert host_port("[fe80::1]:26379") == ("fe80::1", 26379)
    for bad in ("redis-0", "redis-0:0", "redis-0:65536", "::1:6379", "a b:1", "redis://x:1"):
        with pytest.raises(ValueError):
            host_port(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{type: redis}", ["store.redis.url: required"]),
        ("{type: redis, mode: cluster}", ["store.redis.url: required with mode: cluster, or `nodes`"]),
        (
            "{type: redis, mode: cluster, url: 'redis://a:1', nodes: ['b:2']}",
            ["store.redis.url: give `url` (any node) or `nodes`, not both"],
        ),
        ("{type: redis, mode: cluster, url: 'redis://a:1/2'}", ["store.redis.url: Redis Cluster has only database 0"]),
        (
            "{type: redis, mode: cluster, nodes: ['b']}",
            ["store.redis.nodes[0]: must be host:port (redis-0.internal:6379; [::1]:6379 for IPv6)"],
        ),
        (
            "{type: redis, mode: cluster, nodes: []}",
            ["store.redis.nodes: List should have at least 1 item after validation, not 0"],
        ),
        (
            "{type: redis, mode: sentinel}",
            [
                "store.redis.sentinels: required with mode: sentinel (host:port of each sentinel)",
                "store.redis.service: required with mode: sentinel (the master's name in the sentinels' configuration)",
            ],
        ),
        (
            "{type: redis, mode: sentinel, sentinels: ['s:1'], service: m, url: 'redis://a:1'}",
            [
                "store.redis.url: not with mode: sentinel (the sentinels name the master: give `sentinels` and `service`)"
            ],
        ),
        (
            "{type: redis, url: 'redis://a:1', service: m, db: 2, nodes: ['a:1']}",
            [
                "store.redis.nodes: only with mode: cluster",
                "store.redis.service: only with mode: sentinel",
                "store.redis.db: only with mode: sentinel",
            ],
        ),
        (
            "{type: redis, mode: shard, url: 'redis://a:1'}",
            ["store.redis.mode: Input should be 'standalone', 'sentinel' or 'cluster'"],
        ),
        (
            "{type: redis, mode: cluster, nodes: ['a:1'], sentinel_password: x}",
            ["store.redis.sentinel_password: only with mode: sentinel"],
        ),
        ("{type: redis, url: 'redis://a:1', hosts: ['a:1']}", ["store.redis.hosts: unknown key"]),
    ],
)
def test_each_problem_is_reported_at_its_path(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


def test_url_problems_never_quote_the_url() -> None:
    found = problems(f"{{type: redis, url: 'http://gw:{SECRET}@redis:6379', password: x, tls: true}}")
    assert found == ["store.redis.url: must start with redis:// or rediss:// or unix://"]
    found = problems(f"{{type: redis, url: 'redis://gw:{SECRET}@redis:6379', username: gw, password: x, tls: true}}")
    assert found == [
        "store.redis.password: the url has a password already: give it in one place",
        "store.redis.username: the url has a username already: give it in one place",
        "store.redis.tls: with a url, its scheme chooses TLS (rediss://)",
    ]
    found = problems(f"{{type: redis, mode: cluster, url: 'redis://[gw:{SECRET}@redis:6379'}}")
    assert found == ["store.redis.url: not a valid URL"]
    assert not any(SECRET in line for line in found)


# ---------------------------------------------------------------- the clients


def retried(errors: tuple[type[Exception], ...]) -> set[str]:
    return {error.__name__ for error in errors if error in (RedisConnectionError, RedisTimeoutError)}


async def test_standalone_client() -> None:
    config = RedisStoreConfig(
        type="redis", url="redis://redis.internal:6380/2", username="gw", password=SECRET, tls_ca_file="ca.pem"
    )
    client = connect(config, STORE)
    try:
        assert type(client) is Redis
        settings = client.connection_pool.connection_kwargs
        assert (settings["host"], settings["port"], settings["db"]) == ("redis.internal", 6380, 2)
        assert (settings["username"], settings["password"], settings["ssl_ca_certs"]) == ("gw", SECRET, "ca.pem")
        assert retried(settings["retry"]._supported_errors) == {"ConnectionError", "TimeoutError"}
        # Bounded by default: a hung Redis or a flood of lookups must not hold connections without end.
        assert (settings["socket_timeout"], settings["socket_connect_timeout"]) == (2.0, 2.0)
        assert client.connection_pool.max_connections == 32
    finally:
        await client.aclose()
    tls = connect(RedisStoreConfig(type="redis", url=f"rediss://:{SECRET}@redis.internal:6380"), profile(0.5))
    try:
        assert issubclass(tls.connection_pool.connection_class, SSLConnection)
        settings = tls.connection_pool.connection_kwargs
        assert (settings["password"], settings["socket_timeout"], settings["socket_connect_timeout"]) == (
            SECRET,
            0.5,
            0.5,
        )
        assert tls.connection_pool.max_connections == MAX_CONNECTIONS
        # The limiter's: a timeout may mean the script ran.
        assert retried(settings["retry"]._supported_errors) == {"ConnectionError"}
    finally:
        await tls.aclose()


async def test_sentinel_client() -> None:
    config = RedisStoreConfig(
        type="redis",
        mode="sentinel",
        sentinels=["s-0:26379", "[::1]:26380"],
        service="mymaster",
        password=SECRET,
        sentinel_username="watcher",
        sentinel_password="other",
        tls=True,
        db=3,
    )
    client = connect(config, profile(0.5))
    try:
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "mymaster"
        assert pool.connection_class is SentinelManagedSSLConnection  # `tls` on the master
        assert (pool.connection_kwargs["password"], pool.connection_kwargs["db"]) == (SECRET, 3)
        asking = pool.sentinel_manager.sentinel_kwargs
        assert (asking["username"], asking["password"], asking["ssl"]) == ("watcher", "other", True)
        addresses = [
            (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in pool.sentinel_manager.sentinels
        ]
        assert addresses == [("s-0", 26379), ("::1", 26380)]
    finally:
        await client.aclose()
    plain = connect(config.model_copy(update={"sentinel_tls": False}), STORE)
    try:
        assert "ssl" not in plain.connection_pool.sentinel_manager.sentinel_kwargs
    finally:
        await plain.aclose()


@pytest.mark.parametrize("kind", ["store", "limiter"])
async def test_cluster_client(kind: str) -> None:
    config = RedisStoreConfig(
        type="redis", mode="cluster", nodes=["redis-0:7000", "redis-1:7001"], username="gw", password=SECRET, tls=True
    )
    chosen: Profile = STORE if kind == "store" else profile(0.5)
    client = connect(config, chosen)
    try:
        assert isinstance(client, RedisCluster)
        assert sorted(client.nodes_manager.startup_nodes) == ["redis-0:7000", "redis-1:7001"]
        settings = client.nodes_manager.connection_kwargs
        assert (settings["username"], settings["password"]) == ("gw", SECRET)
        assert issubclass(settings["connection_class"], SSLConnection)
        assert client.reinitialize_steps == 0  # a MOVED corrects the slot, never closes every connection
        node = client.nodes_manager.startup_nodes["redis-0:7000"]
        # Both bound their connections (and wait for a turn rather than fail at once).
        assert node.max_connections == (MAX_CONNECTIONS if kind == "limiter" else 32)
        assert client.retry.get_retries() == 1
        # redis-py's cluster client retries whatever is in ERRORS_ALLOW_RETRY.
        assert (RedisTimeoutError in type(client).ERRORS_ALLOW_RETRY) == (kind == "store")
        assert RedisConnectionError in type(client).ERRORS_ALLOW_RETRY
    finally:
        await client.aclose()


async def test_the_store_client_takes_its_timeouts_and_cap_from_the_config() -> None:
    config = store_section(
        "{type: redis, url: 'redis://r:6379', socket_timeout: 0.5, socket_connect_timeout: 0.25, max_connections: 8}"
    )
    client = connect(config, store_profile(config))
    try:
        settings = client.connection_pool.connection_kwargs
        assert (settings["socket_timeout"], settings["socket_connect_timeout"]) == (0.5, 0.25)
        assert client.connection_pool.max_connections == 8
    finally:
        await client.aclose()
    assert problems("{type: redis, url: 'redis://r:6379', socket_timeout: 0, max_connections: 0}") == [
        "store.redis.socket_timeout: Input should be greater than 0",
        "store.redis.max_connections: Input should be greater than or equal to 1",
    ]


def test_the_readme_examples_are_valid() -> None:
    readme = (Path(__file__).parent.parent.parent / "README.md").read_text()
    section = readme.split("### Redis: one server, Sentinel or Cluster", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    env = {"REDIS_PASSWORD": SECRET, "SENTINEL_PASSWORD": "other"}
    modes = [parse(document, env=env).store.mode for document in block.split("---\n")]
    assert modes == ["standalone", "cluster", "sentinel"]
