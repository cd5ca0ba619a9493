"""`gateway serve` as a real process, for tests that need several (as several machines would be)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class GatewayProcess:
    url: str
    process: asyncio.subprocess.Process
    log: Path

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


async def start_gateway_process(
    config_text: str, directory: Path, name: str = "gateway", env: dict[str, str] | None = None
) -> GatewayProcess:
    """Write `config_text` (its `server.port` is replaced by a free one) and serve it;
    `env`: variables added to this process's environment for it."""
    port = free_port()
    config = directory / f"{name}.yaml"
    config.write_text(config_text)
    log = directory / f"{name}.log"
    with log.open("w") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            cwd=ROOT,
            stdout=out,
            stderr=out,
            env={**os.environ, **(env or {})},
        )
    for _ in range(200):
        if "gateway listening on" in log.read_text():
            return GatewayProcess(url=f"http://127.0.0.1:{port}", process=process, log=log)
        if process.returncode is not None:
            break
        await asyncio.sleep(0.05)
    raise RuntimeError(f"gateway did not start:\n{log.read_text()[-3000:]}")
