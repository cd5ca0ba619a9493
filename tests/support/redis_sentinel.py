"""A private Redis Sentinel setup, started by the tests from `redis-server` binaries: a
master, a replica of it, and one sentinel watching them as `mymaster` (quorum 1).

Every part requires a password (the data nodes one, the sentinel its own), as a
production setup would, so the tests go through the gateway's credentials for both.
`failover()` has the sentinel promote the replica (SENTINEL FAILOVER: no waiting for a
failure to be detected) and returns once the sentinel names the new master and it
accepts writes. `close()` kills whatever it started and removes the directory, also
when starting failed halfway.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tests.support.redis_process import RedisProcess, wait_until
from tests.support.redis_server import free_port

SERVICE = "mymaster"
PASSWORD = "data-secret-0001"
SENTINEL_PASSWORD = "sentinel-secret-0001"


class LocalSentinel:
    def __init__(self, password: str = PASSWORD, sentinel_password: str = SENTINEL_PASSWORD) -> None:
        self.password = password
        self.sentinel_password = sentinel_password
        self._dir = Path(tempfile.mkdtemp(prefix="gateway-redis-sentinel-"))
        # No delay before a diskless sync (5 s by default): the replica is up at once.
        auth = {"requirepass": password, "masterauth": password, "repl-diskless-sync-delay": "0"}
        self.master = RedisProcess(self._dir, free_port(), auth, password=password)
        self.replica = RedisProcess(
            self._dir, free_port(), {**auth, "replicaof": ["127.0.0.1", str(self.master.port)]}, password=password
        )
        config = "\n".join(
            [
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 1",
                f"sentinel auth-pass {SERVICE} {password}",
                f"sentinel down-after-milliseconds {SERVICE} 1000",
                f"sentinel failover-timeout {SERVICE} 10000",
                f"requirepass {sentinel_password}",
                "",
            ]
        )
        self.sentinel = RedisProcess(self._dir, free_port(), config=config, sentinel=True, password=sentinel_password)

    @property
    def address(self) -> str:
        """The sentinel's host:port."""
        return f"127.0.0.1:{self.sentinel.port}"

    def master_port(self) -> int:
        host, port = self.sentinel.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def start(self) -> LocalSentinel:
        try:
            self.master.start()
            self.replica.start()
            wait_until(
                lambda: "master_link_status:up" in self.replica.command("INFO", "replication"),
                "the replica to sync with the master",
            )
            self.sentinel.start()
            # The sentinel learns of the replica from the master's INFO, then must reach it
            # itself before it would promote it.
            wait_until(self._replica_known, "the sentinel to reach the replica")
        except BaseException:
            self.close()
            raise
        return self

    def _replica_known(self) -> bool:
        replicas = [
            dict(zip(fields[::2], fields[1::2], strict=True))
            for fields in self.sentinel.command("SENTINEL", "REPLICAS", SERVICE)
        ]
        return [(r["flags"], r["master-link-status"]) for r in replicas] == [("slave", "ok")]

    def failover(self) -> None:
        """Promote the replica; back once the sentinel names it and it takes writes."""
        before = self.master_port()
        self.sentinel.command("SENTINEL", "FAILOVER", SERVICE)
        wait_until(lambda: self.master_port() != before, "the sentinel to name a new master", timeout=30)
        promoted = self.replica if self.master_port() == self.replica.port else self.master
        wait_until(lambda: "role:master" in promoted.command("INFO", "replication"), "the new master to take writes")

    def close(self) -> None:
        for process in (self.sentinel, self.replica, self.master):
            process.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalSentinel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
