"""The system under fuzz: `gateway serve` as a real process (one worker, its keys and
limits in a private redis-server), in front of `gateway fake-upstream` as another, for
one OpenAI-style and one native backend, with a `/healthz` prober beside them.

Every process writes to a file of the test's temporary directory: the gateway's file
is its whole log output (its own lines, aiohttp's, the access log), read to make sure
no key ever appears in it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import ROOT, free_port

# The secrets the log must never show: the client's key and each backend's upstream key.
CLIENT_KEY = "gk-fuzzClientKey0123456789abcdefghijklmnopqrstuvw"
OPENAI_UPSTREAM_KEY = "sk-fuzz-openai-upstream-key-9f8e7d6c5b4a"
NATIVE_UPSTREAM_KEY = "sk-ant-fuzz-native-upstream-key-1a2b3c4d5e"
SECRETS = (CLIENT_KEY, OPENAI_UPSTREAM_KEY, NATIVE_UPSTREAM_KEY)

# The model each backend kind is asked for by name.
MODELS = {"openai-style": "fuzz-openai", "native": "fuzz-native"}

STARTUP_SECONDS = 30.0


def gateway_config(upstream_url: str, redis_url: str) -> str:
    """Limits on the team, far above what the fuzz spends, so admission and settlement
    (the Lua scripts) run on every request without refusing any. Upstream timeouts end
    a stalled upstream call well before the tests' own deadline: a stream still open at
    that deadline is the gateway's hang, not the upstream's."""
    timeouts = "{connect: 5, first_byte: 10, idle: 10, total: 15}"
    return f"""
server: {{ping_interval: 1}}
store: {{type: redis, url: "{redis_url}", prefix: fuzz}}
routing: {{retries: 0, cooldown: {{failures: 0}}}}
teams:
  - id: fuzz-team
    limits:
      requests_per_minute: 10000000
      input_tokens_per_minute: 1000000000000000
      output_tokens_per_minute: 1000000000000000
      concurrent_requests: 1000
      tokens_per_day: 1000000000000000
      count_tokens_per_minute: 10000000
    keys:
      - {{name: fuzz-client, key: "{CLIENT_KEY}"}}
backends:
  openai:
    type: openai
    preset: openai
    base_url: {upstream_url}/v1
    api_key: "{OPENAI_UPSTREAM_KEY}"
    timeouts: {timeouts}
  native:
    type: anthropic
    base_url: {upstream_url}
    api_key: "{NATIVE_UPSTREAM_KEY}"
    timeouts: {timeouts}
models:
  - name: {MODELS["openai-style"]}
    routes: [{{backend: openai, model: upstream-openai-model, max_output_tokens: 16384}}]
  - name: {MODELS["native"]}
    routes: [{{backend: native, model: upstream-native-model}}]
"""


@dataclass
class Process:
    """A child process whose output goes to `log`."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def spawn(name: str, directory: Path, *argv: str) -> Process:
    log = directory / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    return Process(name, process, log)


def wait_for(process: Process, line: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while line not in process.text():
        if process.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{process.name} did not start:\n{process.text()[-3000:]}")
        time.sleep(0.05)


@dataclass
class Stack:
    """The server under test (`gateway`, whose log is searched for keys), what it needs
    (`others`: the upstream), and the prober watching it."""

    gateway_url: str
    gateway: Process
    prober: Process
    probes: Path
    others: tuple[Process, ...] = ()

    def processes(self) -> tuple[Process, ...]:
        return (self.gateway, self.prober, *self.others)

    def close(self) -> None:
        for process in (self.prober, self.gateway, *self.others):
            process.stop()


def watched(directory: Path, gateway: Process, gateway_url: str, others: tuple[Process, ...] = ()) -> Stack:
    """A started server with a prober on it (tests/fuzz/prober.py)."""
    probes = directory / "probes.txt"
    probes.touch()
    prober = spawn("prober", directory, "-m", "tests.fuzz.prober", gateway_url, str(gateway.process.pid), str(probes))
    return Stack(gateway_url=gateway_url, gateway=gateway, prober=prober, probes=probes, others=others)


def start_stack(directory: Path, redis_url: str) -> Stack:
    upstream_port, gateway_port = free_port(), free_port()
    upstream_url, gateway_url = f"http://127.0.0.1:{upstream_port}", f"http://127.0.0.1:{gateway_port}"
    config = directory / "gateway.yaml"
    config.write_text(gateway_config(upstream_url, redis_url))
    upstream = spawn(
        "upstream", directory, "-m", "gateway", "fake-upstream", "--port", str(upstream_port), "--no-record"
    )
    # debug: every line the gateway can log is in the file the secrets are looked for in.
    gateway = spawn(
        "gateway",
        directory,
        "-m",
        "gateway",
        "serve",
        "--config",
        str(config),
        "--port",
        str(gateway_port),
        "--workers",
        "1",
        "--log-level",
        "debug",
    )
    try:
        wait_for(upstream, "fake upstream listening")
        wait_for(gateway, "gateway listening on")
        return watched(directory, gateway, gateway_url, (upstream,))
    except BaseException:
        gateway.stop()
        upstream.stop()
        raise
