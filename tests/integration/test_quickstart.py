"""The README's quick start from a configuration file, as a user runs it: `gateway
fake-upstream` and `gateway serve --config config.example.yaml` as real processes, with no
provider key set (`gateway demo`, the one-command quick start: test_demo.py)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).parent.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def start(*args: str, ready: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        if not line:
            raise AssertionError(f"gateway {args[0]} exited before it was ready")
        if ready in line:
            return process


@pytest.fixture
async def quickstart(tmp_path):
    upstream_port, gateway_port = free_port(), free_port()
    config = (ROOT / "config.example.yaml").read_text().replace("127.0.0.1:9099", f"127.0.0.1:{upstream_port}")
    (tmp_path / "config.yaml").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("GATEWAY_")}
    processes = [
        await start("fake-upstream", "--port", str(upstream_port), ready="listening", env=env),
        await start(
            "serve",
            "--config",
            str(tmp_path / "config.yaml"),
            "--port",
            str(gateway_port),
            ready="gateway listening on",
            env=env,
        ),
    ]
    yield f"http://127.0.0.1:{gateway_port}"
    for process in processes:
        process.terminate()
        await process.wait()


@pytest.mark.parametrize("model", ["demo", "demo-native"])
async def test_quick_start_answers(quickstart, model):
    body = {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession(headers={"x-api-key": "gk-demo-change-me"}) as http:
        async with http.post(f"{quickstart}/v1/messages", json=body) as response:
            assert response.status == 200
            message = await response.json()
        assert message["model"] == model
        assert message["content"][0]["text"] == "Hello from the demo upstream. You said: hi"
        async with http.post(f"{quickstart}/v1/messages", json={**body, "stream": True}) as response:
            assert response.status == 200
            raw = await response.text()
        assert raw.startswith("event: message_start\n") and raw.endswith(
            'event: message_stop\ndata: {"type":"message_stop"}\n\n'
        )
        async with http.post(
            f"{quickstart}/v1/messages/count_tokens", json={"model": model, "messages": body["messages"]}
        ) as response:
            assert response.status == 200 and (await response.json())["input_tokens"] > 0
        async with http.get(f"{quickstart}/v1/models") as response:
            ids = [m["id"] for m in (await response.json())["data"]]
        assert "demo" in ids and "demo-native" in ids
