"""`gateway demo`: the scripted upstream and the gateway in one process, nothing to configure.

The gateway runs on the embedded (memory) store with a built-in configuration: one team
and its key, and two models served by the scripted upstream (gateway/fake_upstream.py),
which listens on a free loopback port of its own: `demo` is translated to Chat
Completions, `demo-native` is passed through as Messages. Any other model name goes to
`demo`, so a client that asks for models of its own (Claude Code does) is answered too.
Once it listens, it prints what to try: curl, the Python SDK and Claude Code.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from gateway.config import Config, ConfigError, exposure_problems, parse
from gateway.fake_upstream import FakeUpstream
from gateway.server import Companion, bind_or_exit, serve, setup_logging, url

KEY_ENV = "GATEWAY_DEMO_KEY"
DEFAULT_KEY = "gk-demo-change-me"  # published: served only on loopback (config.exposure_problems)

# `{upstream}`: the scripted upstream's URL. The key is read as config.example.yaml's is.
CONFIG = """
server: {{host: 127.0.0.1, port: 8080}}
store: {{type: memory}}
teams:
  - id: demo
    name: Demo
    models: ["*"]
    limits: {{requests_per_minute: 600, concurrent_requests: 20, tokens_per_day: 10000000}}
    keys:
      - name: demo
        key: ${{{key_env}:-{default_key}}}
backends:
  demo:
    type: openai
    preset: vllm
    base_url: {upstream}/v1
    tokenize_url: {upstream}/tokenize
  demo-native:
    type: anthropic
    base_url: {upstream}
models:
  - name: demo
    display_name: Demo (scripted upstream, translated)
    routes: [{{backend: demo, model: demo-model}}]
  - name: demo-native
    display_name: Demo (scripted upstream, native)
    routes: [{{backend: demo-native, model: demo-model}}]
routing:
  default_model: demo
"""


def demo_config(upstream_url: str) -> Config:
    """The built-in configuration, its backends at `upstream_url`."""
    return parse(CONFIG.format(upstream=upstream_url, key_env=KEY_ENV, default_key=DEFAULT_KEY))


def run(host: str, port: int) -> None:
    """Serve the demo on host:port until SIGTERM/SIGINT (Ctrl-C); exit 1 when it cannot."""
    setup_logging("info")
    upstream_socket = bind_or_exit("127.0.0.1", 0, reuse_port=False)
    upstream_url = url("127.0.0.1", upstream_socket.getsockname()[1])
    try:
        config = demo_config(upstream_url)
    except ConfigError as exc:  # only GATEWAY_DEMO_KEY can make it so
        _refuse(exc.problems)
    problems = exposure_problems(config, host)
    if problems:
        _refuse(problems, f"the demo's key is ${KEY_ENV}; set it to a random value to serve beyond loopback")
    companion = Companion(FakeUpstream(record=False).app(), upstream_socket)
    serve(
        config,
        host,
        port,
        workers=1,
        companion=companion,
        announce=lambda served: print(banner(served, upstream_url), flush=True),
    )


def _refuse(problems: list[str], hint: str | None = None) -> NoReturn:
    print(f"gateway demo: {len(problems)} problem(s):", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    if hint is not None:
        print(hint, file=sys.stderr)
    sys.exit(1)


def reachable(served_url: str) -> str:
    """The URL a client on this machine uses: a wildcard address (every interface) is
    not one to connect to, its loopback is."""
    for wildcard, loopback in (("0.0.0.0", "127.0.0.1"), ("[::]", "[::1]")):
        prefix = f"http://{wildcard}:"
        if served_url.startswith(prefix):
            return f"http://{loopback}:" + served_url[len(prefix) :]
    return served_url


def banner(served_url: str, upstream_url: str) -> str:
    """What to try, once the gateway listens. A key chosen in $GATEWAY_DEMO_KEY is shown
    by its name, never its value."""
    base = reachable(served_url)
    chosen = bool(os.environ.get(KEY_ENV))
    shell_key = f'"${KEY_ENV}"' if chosen else DEFAULT_KEY
    python_key = f'os.environ["{KEY_ENV}"]' if chosen else f'"{DEFAULT_KEY}"'
    header = f'-H "x-api-key: ${KEY_ENV}"' if chosen else f"-H 'x-api-key: {DEFAULT_KEY}'"
    ask = '{"model": "demo", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}'
    stream = '{"model": "demo", "stream": true, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}'
    lines = [
        "",
        f"The demo gateway serves on {base} (embedded store; the scripted upstream on {upstream_url}).",
        "Models: demo (translated to Chat Completions), demo-native (passed through as Messages);",
        "any other model name is answered by demo.",
        "",
        "curl:",
        f"  curl -s {base}/v1/messages {header} -H 'content-type: application/json' \\",
        f"    -d '{ask}'",
        f"  curl -sN {base}/v1/messages {header} -H 'content-type: application/json' \\",
        f"    -d '{stream}'",
        "",
        "The Python SDK (pip install anthropic):",
        *(["  import os"] if chosen else []),
        "  import anthropic",
        f'  client = anthropic.Anthropic(base_url="{base}", api_key={python_key})',
        '  reply = client.messages.create(model="demo", max_tokens=100, messages=[{"role": "user", "content": "hi"}])',
        "  print(reply.content[0].text)",
        "",
        "Claude Code:",
        f'  ANTHROPIC_BASE_URL={base} ANTHROPIC_API_KEY={shell_key} ANTHROPIC_MODEL=demo claude -p "say hi"',
        "",
        "Ctrl-C stops it.",
        "",
    ]
    return "\n".join(lines)
