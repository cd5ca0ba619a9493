"""`server.admin_listen` with `gateway serve --workers 2`: a supervisor, two real worker
processes and a redis-server. Every worker binds the admin port as it binds the client
port (SO_REUSEPORT), which the kernel shows (`/proc/net/tcp`): each worker holds a
listening socket on both. The operator's paths answer there only; the client port
answers them 404. SIGTERM still drains and exits 0 with two listeners per worker.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
import anthropic
import pytest

from tests.integration.test_workers import children, redis_config, serve, until
from tests.support.processes import free_port

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc (Linux)")

ADMIN_TOKEN = "admin-token-for-the-workers-test-000001"
METRICS_TOKEN = "metrics-token-for-the-workers-test-0001"


def listening_pids(port: int, among: set[int]) -> set[int]:
    """Which of the processes `among` hold a socket listening on `port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                    inodes.add(fields[9])
    holders = set()
    for pid in among:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                holders.add(pid)
    return holders


async def messages_answered(url: str) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.get(url, headers={"authorization": f"Bearer {METRICS_TOKEN}"}) as response:
            assert response.status == 200
            exposition = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith("gateway_requests_total{")
        and 'operation="messages"' in line
        and 'status_class="2xx"' in line
    )


async def test_every_worker_serves_the_admin_listener_and_only_it_serves_the_operator(upstream, redis_url, tmp_path):
    admin_port = free_port()
    server = f"ping_interval: 0.2, admin_listen: '127.0.0.1:{admin_port}', metrics_token: {METRICS_TOKEN}"
    text = redis_config(upstream.url, redis_url, server) + f"admin: {{token: {ADMIN_TOKEN}}}\n"
    served = await serve(text, tmp_path, "--workers", "2")
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        assert f"admin listening on {admin} (/admin, /metrics)" in served.text()
        workers = children(served.process.pid)
        assert len(workers) == 2
        await until(lambda: listening_pids(admin_port, workers) == workers, 15)
        assert listening_pids(served.port, workers) == workers

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            body = {"teams": ["team-a"], "name": "made-on-the-admin-port"}
            async with http.post(
                f"{admin}/admin/keys", json=body, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
            ) as response:
                assert response.status == 201, await response.text()
                key = (await response.json())["key"]
            async with http.get(
                f"{served.url}/admin/teams", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
            ) as response:
                assert response.status == 404
            async with http.get(f"{served.url}/metrics") as response:
                assert response.status == 404

        async with anthropic.AsyncAnthropic(base_url=served.url, api_key=key, max_retries=0) as sdk:
            for _ in range(4):
                message = await sdk.messages.create(
                    model="chat-model", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
                )
                assert message.type == "message"

        # Any worker's /metrics adds up both: the four answers are there, whichever answers
        # (once recorded: an answer reaches the client before its metrics do).
        deadline = time.monotonic() + 15
        while (answered := await messages_answered(f"{admin}/metrics")) < 4:
            assert time.monotonic() < deadline, f"{answered} of 4 answers recorded"
            await asyncio.sleep(0.05)
        assert answered == 4
    finally:
        assert await served.stop() == 0
