"""The code passes the project's lint rules and is formatted as `ruff format` leaves it
(pyproject.toml [tool.ruff]), so the test command is the only gate.

ruff is a dev dependency: without it this fails (it never skips), since a lint that can
be switched off by not installing it is no gate."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support import binaries

ROOT = Path(__file__).parent.parent.parent


def test_ruff_is_clean():
    ruff = binaries.find("ruff")
    assert ruff is not None, "ruff is not installed: pip install -e '.[dev]' (it is a dev dependency)"
    result = subprocess.run(
        [ruff, "check", "gateway", "tests", "bench"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_leaves_the_code_as_it_is():
    ruff = binaries.find("ruff")
    assert ruff is not None, "ruff is not installed: pip install -e '.[dev]' (it is a dev dependency)"
    result = subprocess.run(
        [ruff, "format", "--check", "gateway", "tests", "bench"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, "run `ruff format gateway tests bench`:\n" + result.stdout + result.stderr
