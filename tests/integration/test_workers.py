"""`gateway serve --workers N`: a supervisor and N real worker processes on one port.

Which worker served what is read from the kernel, not from the gateway: the worker pids
are the supervisor's children (`/proc/*/stat`), and a worker holds a connection when one
of its file descriptors is a socket that `/proc/net/tcp` lists as established on the
gateway's port.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.observe import names as n
from tests.integration.test_metrics import scrape, value
from tests.support.processes import ROOT, free_port
from tests.support.replies import chat_chunks
from tests.support.servers import CLIENT_HEADERS, gateway_config

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc (Linux)")

ASK = {"model": "chat-model", "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]}


@dataclass
class Served:
    url: str
    port: int
    process: asyncio.subprocess.Process
    log: Path
    config: Path

    def text(self) -> str:
        return self.log.read_text()

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.terminate()
        return await asyncio.wait_for(self.process.wait(), 30)


async def serve(config_text: str, directory: Path, *args: str, wait: bool = True) -> Served:
    port = free_port()
    config = directory / "gateway.yaml"
    config.write_text(config_text)
    log = directory / "gateway.log"
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
            *args,
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
    served = Served(f"http://127.0.0.1:{port}", port, process, log, config)
    if wait:
        await until(lambda: "gateway listening on" in served.text() or process.returncode is not None, 30)
        assert process.returncode is None, served.text()[-3000:]
    return served


async def until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def established_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(fields[9])
    return inodes


def holds_connections(pid: int, port: int) -> bool:
    inodes = established_inodes(port)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


async def serving_pids(served: Served, connections: int = 24) -> set[int]:
    """Open `connections` keep-alive connections (one request each, all kept open) and
    return the workers that hold at least one."""
    sessions = [aiohttp.ClientSession() for _ in range(connections)]
    try:
        for http in sessions:
            async with http.get(f"{served.url}/healthz") as response:
                assert response.status == 200
        return {pid for pid in children(served.process.pid) if holds_connections(pid, served.port)}
    finally:
        for http in sessions:
            await http.close()


async def ask(url: str, body: dict | None = None) -> int:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.post(f"{url}/v1/messages", json=body or ASK, headers=CLIENT_HEADERS) as response:
            await response.read()
            return response.status


def redis_config(upstream_url: str, redis_url: str, server: str = "ping_interval: 0.2") -> str:
    text = gateway_config(upstream_url, f"store: {{type: redis, url: '{redis_url}'}}\n")
    return text.replace("server: {ping_interval: 0.2}", f"server: {{{server}}}")


def events_of(raw: bytes) -> list[dict]:
    events = []
    for block in raw.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                events.append(orjson.loads(line[6:]))
    return events


async def read_stream(response: aiohttp.ClientResponse, first: bytes) -> list[dict]:
    raw = first
    try:
        async for chunk in response.content.iter_any():
            raw += chunk
    except aiohttp.ClientPayloadError:
        pass  # judged by the events received
    return events_of(raw)


def refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        try:
            sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        return False


# ---------------------------------------------------------------------------- tests


async def test_two_workers_share_the_port(upstream, redis_url, tmp_path):
    served = await serve(redis_config(upstream.url, redis_url), tmp_path, "--workers", "2")
    try:
        assert "(2 workers" in served.text()
        assert len(children(served.process.pid)) == 2
        statuses = await asyncio.gather(*(ask(served.url) for _ in range(40)))
        assert statuses == [200] * 40
        assert len(await serving_pids(served)) == 2
    finally:
        assert await served.stop() == 0


async def test_a_killed_worker_is_replaced_and_the_port_keeps_answering(upstream, redis_url, tmp_path):
    served = await serve(redis_config(upstream.url, redis_url), tmp_path, "--workers", "2")
    try:
        before = children(served.process.pid)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        answered_meanwhile = 0
        while (now := children(served.process.pid)) - before == set() or len(now) < 2:
            try:  # the survivor answers while the replacement starts
                answered_meanwhile += await ask(served.url) == 200
            except aiohttp.ClientError:
                pass  # a connection the dead worker had accepted
        assert victim not in now
        await until(lambda: "restarted: pid" in served.text() and "serving" in served.text().split("restarted")[-1], 15)
        assert "exited with signal SIGKILL" in served.text()
        assert answered_meanwhile >= 1
        statuses = await asyncio.gather(*(ask(served.url) for _ in range(30)))
        assert statuses == [200] * 30
        assert await serving_pids(served) == now  # the replacement serves too
    finally:
        assert await served.stop() == 0


async def open_streams(served: Served, count: int) -> tuple[aiohttp.ClientSession, list]:
    http = aiohttp.ClientSession()
    streams = []
    for _ in range(count):
        response = await http.post(f"{served.url}/v1/messages", json={**ASK, "stream": True}, headers=CLIENT_HEADERS)
        assert response.status == 200
        first = await response.content.readany()
        assert b"message_start" in first
        streams.append((response, first))
    return http, streams


async def test_sigterm_drains_open_streams_then_exits_0(upstream, redis_url, tmp_path):
    # Each stream: 8 items, 0.2 s apart (~1.5 s); the drain deadline is far longer.
    upstream.script(*[{"sse": chat_chunks(*({"content": f"w{i} "} for i in range(5))), "chunk_delay": 0.2}] * 20)
    text = redis_config(upstream.url, redis_url, "ping_interval: 0.2, drain_seconds: 20")
    served = await serve(text, tmp_path, "--workers", "2")
    http, streams = await open_streams(served, 20)
    try:
        served.process.send_signal(signal.SIGTERM)
        await until(lambda: refused(served.port), 5)  # no new connections, streams still open
        results = await asyncio.gather(*(read_stream(response, first) for response, first in streams))
        for events in results:
            assert events[-1]["type"] == "message_stop", events[-3:]
            assert not any(e["type"] == "error" for e in events)
        assert await asyncio.wait_for(served.process.wait(), 15) == 0
        assert upstream.completed_streams == 20
    finally:
        await http.close()
        await served.stop()


async def test_streams_past_the_drain_deadline_end_with_an_error_event(upstream, tmp_path):
    # ~4 s streams, a 0.5 s deadline; one process (no supervisor) drains the same way.
    upstream.script(*[{"sse": chat_chunks(*({"content": f"w{i} "} for i in range(10))), "chunk_delay": 0.4}] * 20)
    text = gateway_config(upstream.url).replace(
        "server: {ping_interval: 0.2}", "server: {ping_interval: 0.2, drain_seconds: 0.5}"
    )
    served = await serve(text, tmp_path, "--workers", "1")
    http, streams = await open_streams(served, 20)
    try:
        started = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*(read_stream(response, first) for response, first in streams))
        for events in results:
            assert events[-1]["type"] == "error", events[-3:]
            assert events[-1]["error"]["type"] == "overloaded_error"
        assert await asyncio.wait_for(served.process.wait(), 15) == 0
        assert time.monotonic() - started < 3.5
        assert "drain deadline reached: cancelling 20 request(s)" in served.text()
    finally:
        await http.close()
        await served.stop()


async def test_the_memory_store_refuses_several_workers(upstream, tmp_path):
    served = await serve(gateway_config(upstream.url), tmp_path, "--workers", "2", wait=False)
    assert await asyncio.wait_for(served.process.wait(), 30) == 1
    text = served.text()
    assert "--workers 2 with the memory store" in text and "store: {type: redis" in text
    assert "gateway listening on" not in text


async def test_sighup_reloads_every_worker(upstream, redis_url, tmp_path):
    text = redis_config(upstream.url, redis_url)
    served = await serve(text, tmp_path, "--workers", "2")
    try:
        assert await ask(served.url, {**ASK, "model": "added-model"}) == 404
        added = "\nmodels:\n  - name: added-model\n    routes: [{backend: chat, model: upstream-chat-model}]\n"
        assert text.count("\nmodels:\n") == 1
        served.config.write_text(text.replace("\nmodels:\n", added))
        served.process.send_signal(signal.SIGHUP)
        await until(lambda: served.text().count("configuration reloaded from") == 2, 10)
        statuses = await asyncio.gather(*(ask(served.url, {**ASK, "model": "added-model"}) for _ in range(30)))
        assert statuses == [200] * 30
    finally:
        assert await served.stop() == 0


async def test_metrics_from_any_worker_count_every_worker(upstream, redis_url, tmp_path):
    """Prometheus scrapes whichever worker the kernel hands the connection to: each must
    report the totals of all of them (prometheus-client multiprocess mode, set up by
    `gateway serve` itself)."""
    served = await serve(redis_config(upstream.url, redis_url), tmp_path, "--workers", "2")
    try:
        assert "(2 workers" in served.text()
        statuses = [await ask(served.url) for _ in range(20)]  # fresh connections: both workers serve
        assert statuses == [200] * 20
        for _ in range(6):
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                samples, _ = await scrape(http, served.url)
            assert value(samples, n.REQUESTS, status_class="2xx") == 20
    finally:
        assert await served.stop() == 0
