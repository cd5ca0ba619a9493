"""What is measured: the scenarios (request shapes), the targets (what wrk calls) and the
gateway configuration those need."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import orjson

BENCH_KEY = "gk-bench-key-0001"  # declared in the generated YAML, never a real key
LIMITED_KEY = "gk-bench-key-limited"
STREAM_CHUNKS = 20
# Every limit the gateway has, set high enough never to refuse: each request still makes
# its admission and settlement round trips to Redis.
HIGH_LIMITS = {
    "requests_per_minute": 100_000_000,
    "input_tokens_per_minute": 100_000_000_000,
    "output_tokens_per_minute": 100_000_000_000,
    "concurrent_requests": 100_000,
    "tokens_per_day": 100_000_000_000_000,
    "tokens_per_month": 100_000_000_000_000,
}
SYSTEM = "You are a concise assistant. Answer in plain text, without lists or headings."
QUESTION = "In two sentences, why do reverse proxies keep upstream connections alive between requests?"


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: bool
    chunks: int = 0
    delay_ms: float = 0.0
    # A captured client request to send instead of the short question (bench/bodies/):
    # the work that grows with the body (parsing, validation, estimate, translation).
    body: str | None = None
    # Run when no --scenario names it.
    default: bool = True

    @property
    def gateway_model(self) -> str:
        """The gateway model whose backend asks the upstream for this stream shape."""
        return f"bench-{self.name}"


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("nonstream", stream=False),
        Scenario("stream-b2b", stream=True, chunks=STREAM_CHUNKS, delay_ms=0),
        Scenario("stream-paced", stream=True, chunks=STREAM_CHUNKS, delay_ms=5),
        # A Claude Code turn (~30 KB: system prompt, 12 tools, thinking): named to run.
        Scenario("nonstream-cc", stream=False, body="claude-code-turn.json", default=False),
        Scenario("stream-cc", stream=True, chunks=STREAM_CHUNKS, body="claude-code-turn.json", default=False),
    )
}
BODIES = Path(__file__).resolve().parent / "bodies"
# Streams that stay open: a first chunk, then nothing for an hour (the idle-streams mode).
IDLE = Scenario("stream-idle", stream=True, chunks=STREAM_CHUNKS, delay_ms=3_600_000)


def _captured(scenario: Scenario) -> dict:
    body = orjson.loads((BODIES / scenario.body).read_bytes())
    body["model"] = scenario.gateway_model
    body["stream"] = scenario.stream
    return body


def messages_body(scenario: Scenario) -> bytes:
    """What a client sends the gateway (`/v1/messages`)."""
    if scenario.body is not None:
        return orjson.dumps(_captured(scenario))
    body = {
        "model": scenario.gateway_model,
        "max_tokens": 256,
        "system": SYSTEM,
        "messages": [{"role": "user", "content": QUESTION}],
    }
    if scenario.stream:
        body["stream"] = True
    return orjson.dumps(body)


def chat_body(scenario: Scenario) -> bytes:
    """What the gateway sends the upstream for `messages_body(scenario)` (checked by hand
    against the gateway's own request): the direct and floor paths send exactly this. A
    captured body goes through the gateway's own translation (the vllm preset, as the
    generated config)."""
    if scenario.body is not None:
        from gateway.backends.presets import PRESETS
        from gateway.translate.messages_chat.request import to_chat_request

        call = to_chat_request(_captured(scenario), upstream_model="bench-model", dialect=PRESETS["vllm"])
        return orjson.dumps(call.body)
    body: dict = {
        "model": "bench-model",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        "max_tokens": 256,
    }
    if scenario.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def shape_headers(scenario: Scenario) -> dict[str, str]:
    """Headers that ask the bench upstream for the scenario's stream shape."""
    if not scenario.stream:
        return {}
    delay = int(scenario.delay_ms) if scenario.delay_ms == int(scenario.delay_ms) else scenario.delay_ms
    return {"x-fake-chunks": str(scenario.chunks), "x-fake-chunk-delay-ms": str(delay)}


@dataclass(frozen=True)
class Request:
    """One wrk target: where to POST what."""

    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


JSON = {"content-type": "application/json"}


def chat_request(base_url: str, scenario: Scenario) -> Request:
    return Request(f"{base_url}/v1/chat/completions", chat_body(scenario), {**JSON, **shape_headers(scenario)})


def messages_request(base_url: str, scenario: Scenario, key: str) -> Request:
    headers = {**JSON, "x-api-key": key, "anthropic-version": "2023-06-01"}
    return Request(f"{base_url}/v1/messages", messages_body(scenario), headers)


def gateway_config(
    *, port: int, upstream_port: int, redis_url: str | None, limited: bool, server: dict | None = None
) -> str:
    """The gateway's YAML: one backend and model per scenario (the backend's `headers:` ask
    the upstream for the stream shape), the bench team and its key from the `teams:`
    bootstrap, with `limited` every limit set (see HIGH_LIMITS), and `server` settings
    beyond the listening address."""
    store = f"{{type: redis, url: '{redis_url}'}}" if redis_url else "{type: memory}"
    limits = f"\n    limits: {orjson.dumps(HIGH_LIMITS).decode()}" if limited else ""
    key = LIMITED_KEY if limited else BENCH_KEY
    lines = [
        f"server: {orjson.dumps({'host': '127.0.0.1', 'port': port, **(server or {})}).decode()}",
        f"store: {store}",
        "teams:",
        "  - id: bench",
        f"    models: ['*']{limits}",
        f"    keys: [{{name: bench, key: {key}}}]",
        "backends:",
    ]
    for scenario in (*SCENARIOS.values(), IDLE):
        headers = orjson.dumps(shape_headers(scenario)).decode()
        lines.append(
            f"  {scenario.gateway_model}: {{type: openai, preset: vllm,"
            f" base_url: 'http://127.0.0.1:{upstream_port}/v1', headers: {headers}}}"
        )
    lines.append("models:")
    for scenario in (*SCENARIOS.values(), IDLE):
        name = scenario.gateway_model
        lines.append(f"  - {{name: {name}, routes: [{{backend: {name}, model: bench-model}}]}}")
    return "\n".join(lines) + "\n"
