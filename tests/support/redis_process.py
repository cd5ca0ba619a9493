"""One `redis-server` process (a cluster node, a replica, a sentinel) with the options a
test gives it, on a free port, in a working directory the caller owns.

`tests/support/redis_server.py` is the plain private server most tests use; this is the
building block of `redis_cluster.py` and `redis_sentinel.py`, which need options it does
not take. Commands it sends itself use a raw socket and a small RESP reader (a whole
reply: CLUSTER INFO is a bulk string, SENTINEL answers arrays), so it depends on no
Redis client.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support import binaries


def missing_binaries(*names: str) -> str | None:
    """Why the Redis tests that need these binaries must skip, or None."""
    return binaries.missing(*names, how="apt-get install redis-server; these tests need real ones")


class RespError(Exception):
    """An error reply (`-ERR ...`)."""


def _read_reply(stream: Any) -> Any:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("redis-server closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RespError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else stream.read(size + 2)[:-2].decode()
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_read_reply(stream) for _ in range(size)]
    raise ConnectionError(f"unexpected reply from redis-server: {line!r}")


def raw_command(port: int, *args: str, password: str | None = None, timeout: float = 5.0) -> Any:
    """Send one command (after AUTH when `password` is given); its parsed reply. An error
    reply raises `RespError`."""
    commands = ([("AUTH", password)] if password else []) + [args]
    payload = b"".join(
        f"*{len(cmd)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in cmd)
        for cmd in commands
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        with sock.makefile("rb") as stream:
            replies = [_read_reply(stream) for _ in commands]
    for reply in replies:
        if isinstance(reply, RespError):
            raise reply
    return replies[-1]


class RedisProcess:
    def __init__(
        self,
        directory: Path,
        port: int,
        options: Mapping[str, str | list[str]] | None = None,
        *,
        config: str | None = None,
        sentinel: bool = False,
        password: str | None = None,
    ) -> None:
        """`options` become `--name value` arguments (a list: several values); `config`
        is written to a file the server may rewrite (a sentinel must have one);
        `password`: what this helper sends as AUTH."""
        self.directory = directory
        self.port = port
        self.options = dict(options or {})
        self.config = config
        self.sentinel = sentinel
        self.password = password
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"{'sentinel' if self.sentinel else 'redis'}-{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / f"{self.name}.log"

    def argv(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        argv = [binary]
        if self.config is not None:
            path = self.directory / f"{self.name}.conf"
            path.write_text(self.config)
            argv.append(str(path))
        if self.sentinel:
            argv.append("--sentinel")
        options: dict[str, str | list[str]] = {"port": str(self.port), "bind": "127.0.0.1"}
        if not self.sentinel:
            options.update({"save": "", "appendonly": "no"})
        options.update(self.options)
        options.update({"dir": str(self.directory), "logfile": str(self.log)})
        for name, value in options.items():
            argv += [f"--{name}", *([value] if isinstance(value, str) else value)]
        return argv

    def start(self, timeout: float = 10.0) -> RedisProcess:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self._process = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                tail = self.log.read_text()[-2000:] if self.log.exists() else ""
                raise RuntimeError(f"{self.name} exited with {self._process.returncode}:\n{tail}")
            try:
                if self.command("PING") == "PONG":
                    return self
            except (OSError, RespError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.name} did not answer PING within {timeout}s")
            time.sleep(0.02)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self, *args: str) -> Any:
        return raw_command(self.port, *args, password=self.password)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it takes longer than `timeout`."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a hung server)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as in a crash."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


def wait_until(predicate: Any, what: str, timeout: float = 15.0, interval: float = 0.05) -> None:
    """Poll `predicate()` (errors count as "not yet") until it is true; RuntimeError naming
    `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, RespError) as exc:
            last = exc
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))
