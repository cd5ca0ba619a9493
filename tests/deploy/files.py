"""What the deploy/ tests share: where the files are, how to read them, where the tools are.

Every external validator is optional: a test that needs one it cannot find skips and says
how to get it (`pip install -e '.[dev]'` for the PyPI ones, `apt-get install prometheus`
for promtool), or fails under .ci/run's strict mode (tests/support/binaries.py).
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
from pathlib import Path
from typing import Any

import yaml

from tests.support import binaries

ROOT = Path(__file__).parent.parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SCHEMAS = Path(__file__).parent / "schemas"

# Written by another part of issue 9; these tests reference them and skip, naming them,
# while they do not exist yet.
RULES = DEPLOY / "prometheus-rules.yaml"
DASHBOARD = DEPLOY / "grafana-dashboard.json"

# ${NAME} (must be set) or ${NAME:-default}, as gateway/config.py reads them.
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests() -> dict[Path, dict]:
    """Every Kubernetes object under deploy/kubernetes (the kustomization is not one)."""
    objects = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        documents = load_yaml_documents(path)
        assert len(documents) == 1, f"{path.name}: one object per file"
        objects[path] = documents[0]
    return objects


def manifest(kind: str) -> dict:
    found = [obj for obj in manifests().values() if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/kubernetes, found {len(found)}"
    return found[0]


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def required_env(config_text: str) -> set[str]:
    """The ${NAME} references without a default in a gateway YAML (comments aside): the
    gateway refuses to start without them."""
    return {
        m.group(1) for s in _strings(yaml.safe_load(config_text)) for m in ENV_REF.finditer(s) if m.group(2) is None
    }


def all_env(config_text: str) -> set[str]:
    """Every ${NAME} a gateway YAML refers to, with a default or not (comments aside)."""
    return {m.group(1) for s in _strings(yaml.safe_load(config_text)) for m in ENV_REF.finditer(s)}


def compose_defaults(value: str, required: dict[str, str] | None = None) -> str:
    """Compose's own interpolation with nothing set but `required`: ${NAME:-default} →
    default, ${NAME:?message} → required[NAME] (a KeyError: compose would refuse to start)."""
    value = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?[^}]*\}", lambda m: (required or {})[m.group(1)], value)


# ${NAME:?message}: compose refuses to start while NAME is unset or empty.
COMPOSE_REQUIRED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?[^}]*\}")


def compose_required(value: str) -> set[str]:
    return set(COMPOSE_REQUIRED.findall(value))


def random_secrets(names) -> dict[str, str]:
    """A strong value for each of `names`, as an operator would make them (a client key
    in the `gk-` shape)."""
    return {name: ("gk-" if name.endswith("_KEY") else "") + secrets.token_urlsafe(32) for name in names}


def tool(name: str, hint: str) -> str:
    """The path of a command-line tool (on PATH or next to this Python), or skip saying how to get it."""
    return binaries.require(name, hint)


# ---------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(path: Path = DEPLOY / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions


def dockerfile_stages(instructions: list[tuple[str, str]]) -> list[dict]:
    """One dict per stage: its base image (ARG defaults substituted), name and instructions."""
    args: dict[str, str] = {}
    stages: list[dict] = []
    for keyword, arguments in instructions:
        if keyword == "ARG" and not stages:
            name, _, default = arguments.partition("=")
            args[name.strip()] = default.strip()
        elif keyword == "FROM":
            words = [w for w in arguments.split() if not w.startswith("--")]
            image = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append({"image": image, "name": name, "instructions": []})
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1]["instructions"].append((keyword, arguments))
    return stages


def shell_words(arguments: str) -> list[str]:
    """An exec-form (JSON array) or shell-form instruction's words."""
    if arguments.startswith("["):
        return json.loads(arguments)
    return shlex.split(arguments)
