"""A private `redis-server` on a free port, started by the tests and theirs alone.

Nothing is persisted (`--save ""`, no AOF) and its working directory is a temporary one
removed by `close()`. `kill()` (SIGKILL) and `start()` again on the same port let a test
watch clients lose and regain the server; `pause()`/`resume()` (SIGSTOP/SIGCONT) make a
server that hangs without closing its connections.

Commands it sends itself (PING, FLUSHALL) use a raw socket, so this helper depends on
no Redis client.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    def __init__(self, port: int | None = None, *, persistent: bool = False) -> None:
        """`persistent`: every write is fsynced to an append-only file, so the data survives
        kill() and start() as a production Redis's would."""
        self.port = port or free_port()
        self.persistent = persistent
        self._dir = Path(tempfile.mkdtemp(prefix="gateway-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self._process is not None and self._process.poll() is None:
            raise RuntimeError(f"redis-server is already running on port {self.port}")
        binary = redis_server_path()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        log = self._dir / "redis.log"
        options = {"port": str(self.port), "bind": "127.0.0.1", "save": "", "appendonly": "no"}
        if self.persistent:
            options.update({"appendonly": "yes", "appendfsync": "always"})
        options.update({"dir": str(self._dir), "logfile": str(log)})
        argv = [binary]
        for name, value in options.items():
            argv += [f"--{name}", value]
        self._process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server exited with {self._process.returncode} on port {self.port}:\n{tail}")
            try:
                if self.command("PING") == "+PONG":
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING on port {self.port} within {timeout}s")
            time.sleep(0.02)

    def command(self, *args: str) -> str:
        """Send one command; its reply's first line (enough for PING, FLUSHALL, DBSIZE)."""
        payload = f"*{len(args)}\r\n" + "".join(f"${len(arg.encode())}\r\n{arg}\r\n" for arg in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(payload.encode())
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("redis-server closed the connection")
                reply += chunk
        return reply.split(b"\r\n", 1)[0].decode()

    def flushall(self) -> None:
        reply = self.command("FLUSHALL")
        if reply != "+OK":
            raise RuntimeError(f"FLUSHALL answered {reply}")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it takes longer than `timeout`."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        self._resume(process)
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: the server vanishes at once, as in a crash (its sockets close)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a hung server, a partition)."""
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._resume(self._process)

    @staticmethod
    def _resume(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
