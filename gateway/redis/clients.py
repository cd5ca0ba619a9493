"""redis-py clients for the `store:` section's three shapes: one server (`url`), the
master Sentinel names (`sentinels` + `service`), Redis Cluster (`url` or `nodes`).

The store and the limiter each say how their client must behave (`Profile`): the store
retries a command once after a connection error or a timeout (everything it sends may
run twice); the limiter retries only connection errors (a timeout may mean the script
ran, and an admission run twice charges twice). Both bound their connections and the
wait for an answer.

What redis-py's async RedisCluster does not do, and how the callers get it anyway:

- Its pipelines refuse PUBLISH, EVALSHA and MGET (`PIPELINE_BLOCKED_COMMANDS`), so the
  store's WATCH/MULTI transactions (which publish their change inside the EXEC) and
  multi-command pipelines cannot run through it. Every key a transaction touches shares
  one hash tag, so one master holds them all: `SlotClients` gives a plain client to the
  master that owns a key's slot, and runs an operation again once the topology is
  re-read if the slot moved meanwhile.
- It keeps no `connection_pool`; a subscriber needs one plain connection of its own:
  `feed_client()`. Classic PUBLISH reaches subscribers on every node of a cluster.
- A command issued before the client has read the slot map goes to a random node; each
  MOVED answer counts, and every fifth (`reinitialize_steps`) closes every connection
  of the client, in use or not: a burst of admissions on a fresh client failed with
  "Connection closed by server" and worse, and a closed connection whose script had
  run would be retried. `_Cluster` reads the map before its first command, and MOVED
  only corrects the slot (`reinitialize_steps=0`); connection errors still re-read it.
- Its retry loop (`ERRORS_ALLOW_RETRY`) includes timeouts; the limiter's cluster client
  is a subclass without them.
- When no node can be reached it raises `RedisClusterException`, not a `RedisError`:
  `unreachable()` recognises it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import AskError, ClusterDownError, RedisClusterException, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.config import RedisStoreConfig, host_port

T = TypeVar("T")
Client = Redis | RedisCluster

_UNBOUNDED = 2**31  # redis-py's own "no limit" for a pool

# The slot moved (MOVED is an AskError), or the cluster is between topologies: worth
# one more try once the slot map has been read again.
_SLOT_MOVED = (AskError, TryAgainError, ClusterDownError, SlotNotCoveredError)


@dataclass(frozen=True, slots=True)
class Profile:
    """How a caller's client behaves."""

    # Attempts after the first, on a fresh connection.
    retries: int = 1
    # False: a timeout is not retried (the command may have run; running it twice would
    # count twice).
    retry_timeouts: bool = True
    # Per server (per node on a cluster); None: no limit, as redis-py's default pool.
    max_connections: int | None = None
    # Seconds for an answer, and for a connect unless `socket_connect_timeout` says;
    # None: redis-py's default (no limit).
    socket_timeout: float | None = None
    socket_connect_timeout: float | None = None

    def connect_timeout(self) -> float | None:
        return self.socket_connect_timeout if self.socket_connect_timeout is not None else self.socket_timeout

    def retry(self) -> Retry:
        errors = (RedisConnectionError, RedisTimeoutError) if self.retry_timeouts else (RedisConnectionError,)
        return Retry(NoBackoff(), self.retries, supported_errors=errors)


class _Cluster(RedisCluster):
    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self.initialize()  # a no-op once the slot map is read (see the module's notes)
        return await super().execute_command(*args, **kwargs)


class _ClusterWithoutTimeoutRetries(_Cluster):
    """RedisCluster retries commands after a timeout, whatever its `retry` says."""

    # The base class types this as its own four errors; leaving TimeoutError out is the point.
    ERRORS_ALLOW_RETRY = (RedisConnectionError, ClusterDownError, SlotNotCoveredError)  # type: ignore[assignment]


def unreachable(exc: BaseException) -> bool:
    """Redis (any node of it) cannot be reached now: a connection error, a timeout, a
    cluster failing over, or a cluster client that found no node to talk to (a bare
    `RedisClusterException`, which is no `RedisError`)."""
    return (
        isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError | ClusterDownError | SlotNotCoveredError)
        or type(exc) is RedisClusterException
    )


def connect(config: RedisStoreConfig, profile: Profile) -> Client:
    """The client for `config`'s shape. Nothing is connected until the first command."""
    if config.mode == "cluster":
        return _cluster(config, profile)
    if config.mode == "sentinel":
        return _sentinel_master(config, profile)
    assert config.url is not None  # the settings require a url for a standalone server
    return Redis.from_url(config.url.get_secret_value(), **_settings(config, profile, tls=False))


def _settings(config: RedisStoreConfig, profile: Profile, *, tls: bool) -> dict[str, Any]:
    """Connection keywords common to every shape. `tls`: switch TLS on (a URL chooses by
    its scheme instead)."""
    settings: dict[str, Any] = {"retry": profile.retry()}
    if config.username is not None:
        settings["username"] = config.username
    if config.password is not None:
        settings["password"] = config.password.get_secret_value()
    if profile.max_connections is not None:
        settings["max_connections"] = profile.max_connections
    if profile.socket_timeout is not None:
        settings["socket_timeout"] = profile.socket_timeout
    if profile.connect_timeout() is not None:
        settings["socket_connect_timeout"] = profile.connect_timeout()
    if tls:
        settings["ssl"] = True
    if config.tls_ca_file is not None:
        settings["ssl_ca_certs"] = config.tls_ca_file
    return settings


def _cluster(config: RedisStoreConfig, profile: Profile) -> RedisCluster:
    kind = _Cluster if profile.retry_timeouts else _ClusterWithoutTimeoutRetries
    settings = {**_settings(config, profile, tls=config.url is None and config.tls), "reinitialize_steps": 0}
    # Its default, 100 per node, fails the next command at once (MaxConnectionsError):
    # unbounded like a single server's pool unless the caller bounds it (and waits).
    settings.setdefault("max_connections", _UNBOUNDED)
    if config.url is not None:
        return kind.from_url(config.url.get_secret_value(), **settings)
    nodes = [ClusterNode(*host_port(node)) for node in config.nodes or ()]
    return kind(startup_nodes=nodes, **settings)


def _sentinel_master(config: RedisStoreConfig, profile: Profile) -> Redis:
    """A client of the master the sentinels name now: each new connection asks them, so a
    failover is followed (the old master's connections fail, the retry reconnects)."""
    sentinel_tls = config.tls if config.sentinel_tls is None else config.sentinel_tls
    asking: dict[str, Any] = {}
    if config.sentinel_username is not None:
        asking["username"] = config.sentinel_username
    if config.sentinel_password is not None:
        asking["password"] = config.sentinel_password.get_secret_value()
    if profile.socket_timeout is not None:
        asking["socket_timeout"] = profile.socket_timeout
    if profile.connect_timeout() is not None:
        asking["socket_connect_timeout"] = profile.connect_timeout()
    if sentinel_tls:
        asking["ssl"] = True
        if config.tls_ca_file is not None:
            asking["ssl_ca_certs"] = config.tls_ca_file
    sentinels = Sentinel([host_port(address) for address in config.sentinels or ()], sentinel_kwargs=asking)
    assert config.service is not None  # the config requires it in this mode
    return sentinels.master_for(config.service, db=config.db, **_settings(config, profile, tls=config.tls))


async def feed_client(client: Client, key: str) -> Redis:
    """A client for one subscription: the settings of `client` but no retries (a silent
    reconnect would hide messages lost meanwhile) and no health checks (the subscriber
    pings on its own). On a cluster, a connection to the master holding `key`: a
    PUBLISH on any node reaches it, and if that master is down the data is unreachable
    anyway. Close it with `aclose()`."""
    if isinstance(client, RedisCluster):
        return _node_client(await _node_for(client, key), Retry(NoBackoff(), 0), health_check_interval=0)
    pool = client.connection_pool
    settings = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0), "health_check_interval": 0}
    if isinstance(pool, SentinelConnectionPool):
        # Its connections ask their pool for the master's address: a pool of its own.
        settings.pop("connection_pool", None)
        return Redis.from_pool(
            SentinelConnectionPool(
                pool.service_name, pool.sentinel_manager, connection_class=pool.connection_class, **settings
            )
        )
    return Redis.from_pool(ConnectionPool(connection_class=pool.connection_class, **settings))


async def _node_for(cluster: RedisCluster, key: str) -> ClusterNode:
    await cluster.initialize()  # reads the slot map once, or again after a failure
    node = cluster.get_node_from_key(key)
    assert node is not None  # None only when a replica is asked for; a slot's master is there or it raised
    return node


def _node_client(node: ClusterNode, retry: Retry, **overrides: Any) -> Redis:
    """A plain client to one cluster node with the cluster client's connection settings."""
    settings = {**node.connection_kwargs, "retry": copy.deepcopy(retry), **overrides}
    return Redis.from_pool(ConnectionPool(connection_class=node.connection_class, **settings))


class SlotClients:
    """Runs operations that redis-py's cluster client cannot (WATCH/MULTI transactions
    with PUBLISH, pipelines with MGET or EVALSHA) on a plain client to the master that
    owns a key's slot. On a single server or Sentinel, on the client itself."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._nodes: dict[str, Redis] = {}

    async def run(self, key: str, operation: Callable[[Redis], Awaitable[T]]) -> T:
        """`operation(client)` where `key`'s slot lives. Once more, after the slot map is
        read again, if the slot moved meanwhile (MOVED, ASK) or the cluster was failing
        over; a connection error also has the map read again before it is raised."""
        cluster = self._client
        if not isinstance(cluster, RedisCluster):
            return await operation(cluster)
        for attempt in range(2):
            try:
                return await operation(await self._for(cluster, key))
            except _SLOT_MOVED:
                if attempt:
                    raise
                await self._reread(cluster)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                await self._reread(cluster)
                raise
        raise AssertionError("unreachable")

    async def _for(self, cluster: RedisCluster, key: str) -> Redis:
        node = await _node_for(cluster, key)
        found = self._nodes.get(node.name)
        if found is None:
            found = self._nodes[node.name] = _node_client(node, cluster.retry)
        return found

    async def _reread(self, cluster: RedisCluster) -> None:
        # A node client whose node left stays until close (an idle pool, no connections).
        with contextlib.suppress(Exception):  # unreachable now: the caller's error says so
            await cluster.nodes_manager.initialize()

    async def aclose(self) -> None:
        for client in self._nodes.values():
            await client.aclose()
        self._nodes.clear()


__all__ = ["Client", "Profile", "SlotClients", "connect", "feed_client", "unreachable"]
