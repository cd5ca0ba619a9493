"""A private Redis Cluster of three masters, started by the tests from `redis-server`
binaries and theirs alone.

Each node runs with `--cluster-enabled yes`, its nodes file and logs in a temporary
directory, nothing persisted; `redis-cli --cluster create` assigns the slots (no
replicas), then every node must report `cluster_state:ok`. `close()` kills whatever it
started and removes the directory, also when starting failed halfway.

The nodes require a password (as a production cluster would), so the tests go through
the gateway's credential handling too. The slot ranges `--cluster create` assigns are
deterministic: with three masters, 0-5460 on the first node given, 5461-10922 on the
second, 10923-16383 on the third.

`redis_cluster` is a session fixture for it, `cluster_url` a function one that empties
it first. Test modules that need them import `redis_cluster_fixture` and
`cluster_url_fixture` (pytest finds fixtures in a module's namespace; the names differ
so that test arguments shadow no import). The
cluster starts once per session (the session's stash holds it, however many modules
import the fixtures) and stops at its end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.redis_process import RedisProcess, missing_binaries, raw_command, wait_until
from tests.support.redis_server import free_port

PASSWORD = "cluster-secret-0001"
SLOTS = 16384


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 <= 65535 and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class LocalRedisCluster:
    def __init__(self, masters: int = 3, password: str = PASSWORD) -> None:
        self.password = password
        self._dir = Path(tempfile.mkdtemp(prefix="gateway-redis-cluster-"))
        self.nodes = [self._node(cluster_port()) for _ in range(masters)]

    def _node(self, port: int) -> RedisProcess:
        options = {
            "cluster-enabled": "yes",
            "cluster-config-file": str(self._dir / f"nodes-{port}.conf"),
            "cluster-node-timeout": "3000",
            "requirepass": self.password,
            "masterauth": self.password,
        }
        return RedisProcess(self._dir, port, options, password=self.password)

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    @property
    def url(self) -> str:
        """The first node's URL, password included: the gateway discovers the others."""
        return f"redis://:{self.password}@127.0.0.1:{self.ports[0]}"

    def start(self) -> LocalRedisCluster:
        try:
            for node in self.nodes:
                node.start()
            self._create()
            for node in self.nodes:
                wait_until(
                    lambda node=node: "cluster_state:ok" in node.command("CLUSTER", "INFO"),
                    f"cluster_state:ok on {node.name}",
                )
        except BaseException:
            self.close()
            raise
        return self

    def _create(self) -> None:
        binary = shutil.which("redis-cli")
        if binary is None:
            raise RuntimeError("redis-cli is not installed")
        argv = [binary, "--cluster", "create", *self.addresses, "--cluster-replicas", "0", "--cluster-yes"]
        # REDISCLI_AUTH rather than -a: the password stays off the command line.
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "REDISCLI_AUTH": self.password},
        )
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")

    def command(self, node: int, *args: str):
        return raw_command(self.ports[node], *args, password=self.password)

    def keyslot(self, key: str) -> int:
        return self.command(0, "CLUSTER", "KEYSLOT", key)

    def node_of(self, key: str) -> int:
        """The index (in `nodes`) of the master that holds `key`."""
        slot = self.keyslot(key)
        for first, last, (_, port, *_), *_ in self.command(0, "CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return self.ports.index(port)
        raise RuntimeError(f"slot {slot} is not served")

    def move_slot(self, slot: int, target: int) -> None:
        """Reshard one slot to the master `target`, keys and all, as `redis-cli --cluster
        reshard` does: IMPORTING/MIGRATING, MIGRATE the keys, then every node is told
        the new owner. Clients that knew the old map get MOVED answers."""
        source = next(i for i in range(len(self.nodes)) if self._owns(i, slot))
        if source == target:
            return
        ids = [self.command(i, "CLUSTER", "MYID") for i in range(len(self.nodes))]
        self.command(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", ids[source])
        self.command(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", ids[target])
        while keys := self.command(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "100"):
            self.command(
                source,
                "MIGRATE",
                "127.0.0.1",
                str(self.ports[target]),
                "",
                "0",
                "5000",
                "AUTH",
                self.password,
                "KEYS",
                *keys,
            )
        for node in [target, source, *(i for i in range(len(self.nodes)) if i not in (source, target))]:
            self.command(node, "CLUSTER", "SETSLOT", str(slot), "NODE", ids[target])
        for node in range(len(self.nodes)):
            wait_until(lambda node=node: self._owns(target, slot, asked=node), f"node {node} to see slot {slot} moved")

    def _owns(self, node: int, slot: int, asked: int | None = None) -> bool:
        """Whether `node` serves `slot`, in the slot map of `asked` (default: `node`'s own)."""
        for first, last, (_, port, *_), *_ in self.command(node if asked is None else asked, "CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return port == self.ports[node]
        return False

    def flushall(self) -> None:
        for index in range(len(self.nodes)):
            self.command(index, "FLUSHALL")

    def keys(self, node: int) -> list[str]:
        return sorted(self.command(node, "KEYS", "*"))

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


_STASHED = pytest.StashKey[LocalRedisCluster]()


@pytest.fixture(scope="session", name="redis_cluster")
def redis_cluster_fixture(request: pytest.FixtureRequest) -> LocalRedisCluster:
    """The session's 3-master cluster (emptied by `cluster_url`, not here)."""
    stash = request.config.stash
    if _STASHED not in stash:
        reason = missing_binaries("redis-server", "redis-cli")
        if reason is not None:
            pytest.skip(reason)
        cluster = LocalRedisCluster()
        request.config.add_cleanup(cluster.close)
        stash[_STASHED] = cluster.start()
    return stash[_STASHED]


@pytest.fixture(name="cluster_url")
def cluster_url_fixture(redis_cluster: LocalRedisCluster) -> str:
    """The cluster's URL (a node's, with the password), every node emptied first."""
    redis_cluster.flushall()
    return redis_cluster.url
