"""`gateway demo`, as the README's quick start runs it: one real process (the scripted
upstream and the gateway on the embedded store), asked with the official SDK, streaming
and not, then stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import anthropic
import pytest

from tests.support.processes import ROOT, free_port
from tests.support.replies import chat_chunks

DEFAULT_KEY = "gk-demo-change-me"
BANNER_END = "Ctrl-C stops it.\n\n"


@dataclass
class Demo:
    url: str
    process: asyncio.subprocess.Process
    out: Path
    err: Path

    def printed(self) -> str:
        return self.out.read_text()

    def logged(self) -> str:
        return self.err.read_text()


async def answers(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(f"{url}/healthz") as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False  # not listening yet


async def ready(demo: Demo, timeout: float = 30.0) -> None:
    """Poll until /healthz answers and the banner is printed; fail with the demo's log if
    the process exits or the deadline passes."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while not (await answers(http, demo.url) and demo.printed().endswith(BANNER_END)):
            assert demo.process.returncode is None, f"gateway demo exited:\n{demo.logged()[-3000:]}"
            assert time.monotonic() < deadline, f"gateway demo not ready in {timeout}s:\n{demo.logged()[-3000:]}"
            await asyncio.sleep(0.05)


async def start_demo(directory: Path, *args: str, env: dict[str, str] | None = None) -> Demo:
    port = free_port()
    out, err = directory / "demo.out", directory / "demo.err"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")} | (env or {})
    with out.open("w") as stdout, err.open("w") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "demo",
            "--port",
            str(port),
            *args,
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
            env=environment,
        )
    return Demo(f"http://127.0.0.1:{port}", process, out, err)


async def stop(demo: Demo) -> int:
    if demo.process.returncode is None:
        demo.process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(demo.process.wait(), 30)


@pytest.fixture
async def demo(tmp_path) -> AsyncIterator[Demo]:
    started = await start_demo(tmp_path)
    try:
        await ready(started)
        yield started
    finally:
        if started.process.returncode is None:
            started.process.kill()
            await started.process.wait()


@pytest.mark.parametrize("model", ["demo", "demo-native", "claude-sonnet-4-5"])
async def test_the_sdk_is_answered_streaming_and_not(demo, model):
    question = [{"role": "user", "content": "hi"}]
    async with anthropic.AsyncAnthropic(base_url=demo.url, api_key=DEFAULT_KEY, max_retries=0) as sdk:
        message = await sdk.messages.create(model=model, max_tokens=100, messages=question)
        assert message.content[0].text == "Hello from the demo upstream. You said: hi"
        assert message.model == model
        async with sdk.messages.stream(model=model, max_tokens=100, messages=question) as stream:
            texts = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
        assert "".join(texts) == "Hello from the demo upstream. You said: hi"
        assert final.stop_reason == "end_turn"
        models = [m.id async for m in sdk.models.list()]
    assert models == ["demo", "demo-native"]


async def test_it_prints_what_to_try_and_stops_cleanly_on_sigterm(demo):
    printed = demo.printed()
    assert f"curl -s {demo.url}/v1/messages -H 'x-api-key: {DEFAULT_KEY}'" in printed
    assert f'anthropic.Anthropic(base_url="{demo.url}", api_key="{DEFAULT_KEY}")' in printed
    assert f"ANTHROPIC_BASE_URL={demo.url} ANTHROPIC_API_KEY={DEFAULT_KEY} ANTHROPIC_MODEL=demo claude" in printed
    assert await stop(demo) == 0
    assert "stopped" in demo.logged().splitlines()[-1]


async def test_sigterm_lets_a_stream_in_flight_finish(demo):
    """The scripted upstream lives as long as the gateway's drain: a stream open at
    SIGTERM still reaches its end (its upstream, scripted through the printed URL, sends
    a word every 0.2 s)."""
    upstream = re.search(r"the scripted upstream on (http://\S+)\)", demo.printed()).group(1)
    words = [f"w{i} " for i in range(8)]
    async with aiohttp.ClientSession() as http:
        slow = {"sse": chat_chunks(*({"content": word} for word in words)), "chunk_delay": 0.2}
        async with http.post(f"{upstream}/_script", json=[slow]) as response:
            assert response.status == 200
    question = [{"role": "user", "content": "hi"}]
    async with anthropic.AsyncAnthropic(base_url=demo.url, api_key=DEFAULT_KEY, max_retries=0) as sdk:
        async with sdk.messages.stream(model="demo", max_tokens=100, messages=question) as stream:
            first = await anext(stream.text_stream)
            demo.process.send_signal(signal.SIGTERM)
            rest = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    assert first + "".join(rest) == "".join(words)
    assert len(rest) >= 5  # most of it came after SIGTERM
    assert final.stop_reason == "end_turn"
    assert await stop(demo) == 0


async def test_a_weak_key_beyond_loopback_is_refused(tmp_path):
    refused = await start_demo(tmp_path, "--host", "0.0.0.0")
    assert await asyncio.wait_for(refused.process.wait(), 30) == 1
    assert "GATEWAY_DEMO_KEY" in refused.logged()
    assert refused.printed() == ""


async def test_a_chosen_key_is_used_and_never_printed(tmp_path):
    key = "gk-" + "k3y" * 12
    chosen = await start_demo(tmp_path, env={"GATEWAY_DEMO_KEY": key})
    try:
        await ready(chosen)
        async with anthropic.AsyncAnthropic(base_url=chosen.url, api_key=key, max_retries=0) as sdk:
            message = await sdk.messages.create(
                model="demo", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
        assert message.content[0].text.startswith("Hello from the demo upstream.")
        assert key not in chosen.printed() + chosen.logged()
        assert 'ANTHROPIC_API_KEY="$GATEWAY_DEMO_KEY"' in chosen.printed()
    finally:
        assert await stop(chosen) == 0
