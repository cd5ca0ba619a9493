"""The package type-checks under the project's mypy settings (pyproject.toml [tool.mypy]).

mypy is a dev dependency, so a machine without it fails here rather than skipping: the
test command is the only gate. Its cache (`.mypy_cache`, git-ignored) makes a re-run
take a second or two; a cold run takes several.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent

# Held to --strict: the wire formats, the translators, rule matching, routing, the error tree.
STRICT_MODULES = {
    "gateway.protocols.*",
    "gateway.translate.*",
    "gateway.limiter.rules",
    "gateway.routing",
    "gateway.errors",
}
# The per-module spelling of --strict (the one global-only member, warn_redundant_casts, is global).
STRICT_FLAGS = {
    "disallow_any_generics": True,
    "disallow_subclassing_any": True,
    "disallow_untyped_calls": True,
    "disallow_untyped_defs": True,
    "disallow_incomplete_defs": True,
    "check_untyped_defs": True,
    "disallow_untyped_decorators": True,
    "warn_unused_ignores": True,
    "warn_return_any": True,
    "implicit_reexport": False,
    "strict_equality": True,
    "extra_checks": True,
}


def _mypy_config() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["mypy"]


def test_mypy_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(ROOT / ".mypy_cache")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "No module named mypy" not in result.stderr, "mypy is not installed: pip install -e '.[dev]'"
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success:"), result.stdout + result.stderr


def test_the_strict_modules_stay_strict():
    config = _mypy_config()
    assert config["files"] == ["gateway"]
    assert config["warn_redundant_casts"] is True
    strict = [o for o in config.get("overrides", []) if STRICT_MODULES <= set(o["module"])]
    assert len(strict) == 1, "one override holds every strict module"
    assert {flag: strict[0].get(flag) for flag in STRICT_FLAGS} == STRICT_FLAGS


def test_no_module_is_excused_from_checking():
    config = _mypy_config()
    for section in [config, *config.get("overrides", [])]:
        assert "ignore_errors" not in section, section
        assert section.get("follow_imports", "normal") == "normal", section
        assert not section.get("disable_error_code"), section
    # Missing stubs may be excused only by name, never for a wildcard over everything.
    for section in config.get("overrides", []):
        if section.get("ignore_missing_imports"):
            assert "*" not in section["module"] and not any(m.startswith("gateway") for m in section["module"]), section
    assert not config.get("ignore_missing_imports"), "ignore_missing_imports only for named third-party modules"
