"""Claude Code itself as the client, offline, through a translated (OpenAI-style) route.

Claude Code hides a malformed stream by asking again (a `stream: false` fallback, or the
same stream twice), so a turn that "worked" may have cost two upstream calls. Each test
here therefore also counts the upstream requests: exactly one per turn.

The binary comes from `.ci/run` (npm `@anthropic-ai/claude-code`); set CLAUDE_CODE_BIN to
use another. Without it these tests skip, saying so.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.support.replies import chat_chunks

CLIENTS_DIR = Path(os.environ.get("GATEWAY_TEST_CLIENTS", Path.home() / ".cache" / "gateway-test-clients"))


def claude_binary() -> str | None:
    for candidate in (
        os.environ.get("CLAUDE_CODE_BIN"),
        str(CLIENTS_DIR / "node_modules" / ".bin" / "claude"),
        shutil.which("claude"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


CLAUDE = claude_binary()
pytestmark = pytest.mark.skipif(
    CLAUDE is None, reason="Claude Code is not installed (.ci/run installs it; or set CLAUDE_CODE_BIN)"
)


async def run_claude(gateway_url: str, tmp_path: Path, *args: str, model: str = "chat-model") -> tuple[int, str, str]:
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    (work / "README.md").write_text("hello\n")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": gateway_url,
        "ANTHROPIC_API_KEY": "sk-gw-test-key",
        "ANTHROPIC_MODEL": model,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
    }
    process = await asyncio.create_subprocess_exec(
        CLAUDE, *args, cwd=work, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode, stdout.decode(), stderr.decode()


def messages_requests(upstream) -> list:
    return [r for r in upstream.requests if r.path.endswith("/chat/completions")]


async def test_say_hi(gateway, upstream, tmp_path):
    upstream.script({"sse": chat_chunks({"content": "Hi"}, {"content": " from the gateway!"})})
    code, out, err = await run_claude(gateway.url, tmp_path, "-p", "say hi", "--output-format", "json")
    assert code == 0, (out, err)
    result = json.loads(out)
    assert result["is_error"] is False and result["result"] == "Hi from the gateway!"
    calls = messages_requests(upstream)
    assert len(calls) == 1, "Claude Code re-sent the turn: the stream it got was not well formed"
    assert calls[0].body["stream"] is True
    assert result["usage"]["output_tokens"] == 7  # what the upstream reported, via message_delta


async def test_tool_use_turn(gateway, upstream, tmp_path):
    bash = {"index": 0, "id": "call_ls", "type": "function", "function": {"name": "Bash", "arguments": ""}}
    upstream.script(
        {
            "sse": chat_chunks(
                {"content": "Let me look."},
                {"tool_calls": [bash]},
                {"tool_calls": [{"index": 0, "function": {"arguments": '{"command": "ls", '}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": '"description": "List files"}'}}]},
                finish_reason="tool_calls",
            )
        },
        {"sse": chat_chunks({"content": "There is one file: README.md."})},
    )
    code, out, err = await run_claude(
        gateway.url, tmp_path, "-p", "list the files in this directory", "--output-format", "stream-json", "--verbose"
    )
    assert code == 0, (out, err)
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    final = lines[-1]
    assert final["type"] == "result" and final["result"] == "There is one file: README.md."
    assert final["num_turns"] == 2
    calls = messages_requests(upstream)
    assert len(calls) == 2, "one upstream request per turn, no fallbacks or repeats"
    tool_messages = [m for m in calls[1].body["messages"] if m["role"] == "tool"]
    assert len(tool_messages) == 1 and tool_messages[0]["tool_call_id"] == "call_ls"
    assert "README.md" in tool_messages[0]["content"]
