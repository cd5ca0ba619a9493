"""Golden fixtures: JSON files that hold an input and the expected output, one case per file.

A golden states the documented behaviour (docs/protocol-mapping.md); the expected part is
written by reasoning from the mapping, not copied from what the code prints. When a
deliberate change of behaviour makes many goldens stale, `pytest --update-goldens`
rewrites the expected part of each failing case from the current output; review the
diff before keeping it.

Each fixture file is a JSON object with a `description` (why the case exists, which
mapping row or pitfall) plus input keys and expected keys that depend on the kind of
golden. `Golden.check` compares only the expected keys, so the input is never rewritten.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from gateway.backends.presets import PRESETS
from gateway.translate.messages_chat.dialect import ChatDialect

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
UPDATE_OPTION = "--update-goldens"


@dataclass
class Golden:
    path: Path
    data: dict

    @property
    def name(self) -> str:
        return self.path.stem

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def expected(self, keys: Iterable[str]) -> dict:
        return {key: self.data[key] for key in keys if key in self.data}

    def check(self, actual: dict, keys: Iterable[str], *, update: bool) -> None:
        """Assert that the expected keys of the fixture equal `actual` exactly.

        `keys` lists every key that can hold an expected value for this kind of golden
        (e.g. `chat_request`, `tool_names`, `error`); those missing from `actual` must be
        missing from the fixture too. Under `--update-goldens` a mismatch rewrites them.
        """
        keys = tuple(keys)
        expected = self.expected(keys)
        if expected == actual:
            return
        if update:
            for key in keys:
                self.data.pop(key, None)
            self.data.update(actual)
            self.save()
            return
        assert actual == expected, (
            f"{self.path.relative_to(FIXTURES)} does not match (pytest {UPDATE_OPTION} rewrites it)"
        )

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2, ensure_ascii=False) + "\n")


def load(kind: str) -> list[Golden]:
    """Every fixture under tests/fixtures/<kind>/, sorted by file name."""
    directory = FIXTURES / kind
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise FileNotFoundError(f"no golden fixtures in {directory}")
    return [Golden(path, json.loads(path.read_text())) for path in paths]


def params(kind: str) -> list:
    """`pytest.param` per fixture, with the file stem as the test id."""
    return [pytest.param(golden, id=golden.name) for golden in load(kind)]


def dialect_of(spec: dict) -> ChatDialect:
    """A fixture's `dialect`: `{"preset": name, **flag overrides}`, or overrides of the defaults."""
    spec = dict(spec)
    preset = spec.pop("preset", None)
    return replace(PRESETS[preset] if preset else ChatDialect(), **spec)


def describe_error(error: Exception, expected: dict | None) -> dict:
    """The comparable form of a raised gateway error, shaped like the fixture's error part.

    A fixture may state the message exactly (`message`), loosely (`message_contains`,
    `message_not_contains`) or not at all. The loose forms are kept when the actual
    message satisfies them, so equality holds exactly when the expectation does; when
    one fails, or when no error was expected at all, the real `message` is shown instead.
    """
    message = getattr(error, "message", str(error))
    described: dict[str, Any] = {}
    if expected is not None and "status" in expected:
        described["status"] = getattr(error, "status", None)
    described["type"] = getattr(error, "error_type", type(error).__name__)
    if expected is None:
        described["message"] = message
        return described
    show_message = "message" in expected
    if "message_contains" in expected:
        if expected["message_contains"] in message:
            described["message_contains"] = expected["message_contains"]
        else:
            show_message = True
    if "message_not_contains" in expected:
        if expected["message_not_contains"] not in message:
            described["message_not_contains"] = expected["message_not_contains"]
        else:
            show_message = True
    if show_message:
        described["message"] = message
    return described
