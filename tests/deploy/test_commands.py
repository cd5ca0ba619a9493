"""The commands deploy/ runs are ones the gateway's CLI accepts: the image's CMD, the
Kubernetes container's args and compose's fake-upstream command. A flag the CLI does not
know makes the container exit at once, which nothing else here would notice."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.deploy.files import DEPLOY, ROOT, dockerfile_instructions, dockerfile_stages, load_yaml, manifest

# A flag being added in the same change as the manifest that passes it skips, naming it
# (`serve --workers` was one; it is in the CLI now).
PENDING: set[tuple[str, str]] = set()


def _commands() -> dict[str, list[str]]:
    final = dockerfile_stages(dockerfile_instructions())[-1]["instructions"]
    cmd = json.loads([a for k, a in final if k == "CMD"][-1])
    container = manifest("Deployment")["spec"]["template"]["spec"]["containers"][0]
    services = load_yaml(DEPLOY / "compose.yaml")["services"]
    commands = {"Dockerfile CMD": cmd, "deployment.yaml args": container["args"]}
    for name, service in services.items():
        if "command" in service and service.get("image", "").startswith("gateway:"):
            commands[f"compose.yaml {name}"] = service["command"]
    return commands


def _help(subcommand: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", subcommand, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("where", sorted(_commands()))
def test_the_cli_knows_every_flag(where):
    command = _commands()[where]
    subcommand = command[0]
    known = _help(subcommand)
    pending = []
    for word in command[1:]:
        if not word.startswith("--"):
            continue
        if f"{word} " in known or f"{word}\n" in known or f"{word}," in known:
            continue
        if (subcommand, word) in PENDING:
            pending.append(word)
            continue
        pytest.fail(f"{where}: `gateway {subcommand}` has no {word}")
    if pending:
        pytest.skip(f"{where}: `gateway {subcommand}` has no {', '.join(pending)} yet (issue 9, gateway/server.py)")
