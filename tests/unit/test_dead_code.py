"""No dead code in gateway/: vulture, at a confidence where its findings are real, finds
nothing (unused imports, arguments and variables, unreachable code). Names that only look
unused are listed, with the reason, in tests/vulture_whitelist.py.

vulture is a dev dependency, so a missing one fails here rather than skipping."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHITELIST = ROOT / "tests" / "vulture_whitelist.py"
MIN_CONFIDENCE = "80"
DEAD_CODE_FOUND = 3  # vulture's exit status when it reports something


def vulture(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vulture", *map(str, paths), "--min-confidence", MIN_CONFIDENCE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_vulture_reports_dead_code(tmp_path: Path):
    """The check below can fail: vulture runs and reports what is plainly dead."""
    module = tmp_path / "dead.py"
    module.write_text("import json\n\n\ndef f():\n    return 1\n    print('never')\n")
    result = vulture(module)
    assert result.returncode == DEAD_CODE_FOUND, result.stdout + result.stderr
    assert "unused import 'json'" in result.stdout and "unreachable code" in result.stdout


def test_no_dead_code_in_gateway():
    result = vulture(ROOT / "gateway", WHITELIST)
    assert result.returncode == 0, f"vulture found dead code (or failed):\n{result.stdout}{result.stderr}"
