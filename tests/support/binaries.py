"""The programs some tests run (redis-server, promtool, Claude Code, hadolint...): found,
or the test skips saying what is missing and how to get it.

A developer's `python -m pytest` skips what their machine lacks. `.ci/run` installs all
of it and sets `GATEWAY_TESTS_STRICT=1`: then a missing program fails the test instead
(`require` fails at once; tests/conftest.py turns any other skip whose reason says
something "is not installed" into a failure), so a run that passes tested everything.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest

STRICT_ENV = "GATEWAY_TESTS_STRICT"
MISSING = "is not installed"  # every reason given here says it; tests/conftest.py looks for it


def strict() -> bool:
    """Set by .ci/run: nothing may be skipped for want of a program."""
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def says_missing(reason: str) -> bool:
    """A skip's reason says something the suite needs is missing (here or in a test's own words)."""
    return MISSING in reason or "not installed" in reason


def find(name: str) -> str | None:
    """`name` on PATH, or next to this Python (a console script of the venv not activated)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def missing(*names: str, how: str) -> str | None:
    """Why a test needing all of `names` cannot run (`how`: how to get them), or None."""
    absent = [name for name in names if find(name) is None]
    if not absent:
        return None
    return f"{', '.join(absent)} {MISSING} ({how})"


def require(name: str, how: str) -> str:
    """The path of `name`, or skip (fail under strict mode) saying how to get it."""
    found = find(name)
    if found is None:
        skip(f"{name} {MISSING} ({how})")
    return found


def skip(reason: str) -> NoReturn:
    """`pytest.skip(reason)`, or under strict mode `pytest.fail`."""
    if strict():
        pytest.fail(f"{reason} [{STRICT_ENV}=1: nothing may be skipped for want of it]", pytrace=False)
    pytest.skip(reason)


def needs(*names: str, how: str) -> pytest.MarkDecorator:
    """A mark that skips the test (or module) when one of `names` is missing; under
    strict mode tests/conftest.py makes that skip a failure."""
    reason = missing(*names, how=how)
    return pytest.mark.skipif(reason is not None, reason=reason or "")
