"""Strict mode (`GATEWAY_TESTS_STRICT=1`, set by .ci/run): a test skipped for want of a
program or package fails instead; other skips stay skips. Checked by running pytest on a
small suite with the project's own hooks (tests/conftest.py), as .ci/run would."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

CONFTEST = "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401\n"

SUITE = """
import sys

import pytest

from tests.support import binaries

ABSENT = "gateway-test-no-such-program"


def test_requires_an_absent_program():
    binaries.require(ABSENT, "it never exists")


@binaries.needs(ABSENT, "sh", how="it never exists")
def test_marked_as_needing_an_absent_program():
    pass


@binaries.needs(sys.executable, how="this Python")
def test_marked_as_needing_a_present_program():
    pass


def test_skips_in_its_own_words():
    pytest.skip("redis-server is not installed")


def test_skips_for_another_reason():
    pytest.skip("reads /proc (Linux)")


@pytest.mark.xfail(reason="not installed, but expected to fail", strict=True)
def test_an_expected_failure():
    raise AssertionError


def test_finds_a_present_program():
    assert binaries.require(sys.executable, "this Python") == sys.executable
"""

MODULE_SKIP = 'import pytest\n\npytest.importorskip("gateway_test_no_such_module", reason="it is not installed")\n'


def outcomes(tmp_path: Path, strict: bool) -> dict[str, str]:
    """Each test's outcome in a run of SUITE: passed, skipped, or failed (in its setup,
    as a skipif mark does, or in its body)."""
    suite = tmp_path / ("strict" if strict else "lenient")
    suite.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "test_suite.py").write_text(SUITE)
    (suite / "test_module_skip.py").write_text(MODULE_SKIP)
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_TESTS_STRICT"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if strict:
        env["GATEWAY_TESTS_STRICT"] = "1"
    report = suite / "report.xml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(suite),
            "--continue-on-collection-errors",
            f"--junitxml={report}",
            str(suite),
        ],
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    found = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        children = {child.tag for child in case}
        outcome = "failed" if children & {"failure", "error"} else "skipped" if "skipped" in children else "passed"
        found[case.get("name") or case.get("classname", "")] = outcome
    return found


EXPECTED_LENIENT = {
    "test_requires_an_absent_program": "skipped",
    "test_marked_as_needing_an_absent_program": "skipped",
    "test_marked_as_needing_a_present_program": "passed",
    "test_skips_in_its_own_words": "skipped",
    "test_skips_for_another_reason": "skipped",
    "test_an_expected_failure": "skipped",
    "test_finds_a_present_program": "passed",
}


@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
def test_strict_mode_fails_only_the_skips_for_want_of_something(tmp_path, strict):
    found = outcomes(tmp_path, strict)
    module_skip = {name: outcome for name, outcome in found.items() if name not in EXPECTED_LENIENT}
    tests = {name: outcome for name, outcome in found.items() if name in EXPECTED_LENIENT}
    expected = dict(EXPECTED_LENIENT)
    if strict:
        expected.update(
            {
                name: "failed"
                for name in (
                    "test_requires_an_absent_program",
                    "test_marked_as_needing_an_absent_program",
                    "test_skips_in_its_own_words",
                )
            }
        )
    assert tests == expected
    assert list(module_skip.values()) == (["failed"] if strict else ["skipped"]), found


def test_the_reason_names_what_is_missing_and_how_to_get_it():
    from tests.support import binaries

    assert binaries.missing("gateway-test-no-such-program", sys.executable, how="apt-get install it") == (
        "gateway-test-no-such-program is not installed (apt-get install it)"
    )
    assert binaries.missing(sys.executable, how="-") is None
