"""Citations of docs/protocol-mapping.md resolve: every section number (the section sign
followed by digits) and every pitfall number (a capital P followed by digits) cited in
gateway/, tests/, bench/ and README.md is a heading of that document, and what the
document names as its tests exists.

Captured client traffic (tests/fixtures/clients, bench/bodies) is someone else's text,
not ours, so it is not scanned. A section sign right after an RFC number cites that RFC, not the document.
"""

from __future__ import annotations

import fnmatch
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol-mapping.md"
SCANNED_DIRS = ("gateway", "tests", "bench")
SCANNED_FILES = ("README.md",)
NOT_OURS = (ROOT / "tests" / "fixtures" / "clients", ROOT / "bench" / "bodies")
TEXT_SUFFIXES = frozenset({".py", ".json", ".md", ".yaml", ".yml", ".toml", ".txt", ".sh"})
FIXTURES = ROOT / "tests" / "fixtures"

_PITFALL = r"P[0-9]{1,2}"
_SECTION = r"§ ?[0-9]+[a-z]?(?:\.[0-9]+)*"
_CITATION = re.compile(rf"(?<![\w.-])(?:{_PITFALL}|{_SECTION})(?![\w])")
_RFC_BEFORE = re.compile(r"RFC ?[0-9]+,? ?$")
_HEADING = re.compile(rf"^#{{2,6}} ({_PITFALL}|§[0-9]+(?:\.[0-9]+)*)(?= |$)", re.MULTILINE)
_BACKTICKED = re.compile(r"`([^`]+)`")


def citations(text: str) -> set[str]:
    """The document's numbers `text` cites, normalised (`§ 2.3.` → `§2.3`)."""
    found = set()
    for match in _CITATION.finditer(text):
        if _RFC_BEFORE.search(text[max(0, match.start() - 12) : match.start()]):
            continue
        found.add(match.group().replace(" ", "").rstrip("."))
    return found


def headings(doc: str) -> list[str]:
    """The numbers the document defines, in order (duplicates kept, so they can be found)."""
    return _HEADING.findall(doc)


def scanned_files() -> list[Path]:
    files = [ROOT / name for name in SCANNED_FILES]
    for directory in SCANNED_DIRS:
        for path in sorted((ROOT / directory).rglob("*")):
            if path.is_file() and path.suffix in TEXT_SUFFIXES and "__pycache__" not in path.parts:
                if not any(path.is_relative_to(skip) for skip in NOT_OURS) and path != Path(__file__).resolve():
                    files.append(path)
    return files


def cited_where() -> dict[str, list[str]]:
    """Each cited number → the `file:line` places citing it."""
    places: dict[str, list[str]] = defaultdict(list)
    for path in scanned_files():
        for number, line in _numbered_lines(path):
            places[number].append(f"{path.relative_to(ROOT)}:{line}")
    return places


def _numbered_lines(path: Path) -> list[tuple[str, int]]:
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        out.extend((number, i) for number in citations(line))
    return out


def test_citations_are_recognised():
    text = "see §2.3 and § 6.4.5., P4 and (P38); RFC 4291 §2.5.5.1; not P123, HTTP2 or UP4"
    assert citations(text) == {"§2.3", "§6.4.5", "P4", "P38"}


def test_every_cited_number_is_a_heading_of_the_document():
    defined = set(headings(DOC.read_text(encoding="utf-8")))
    places = cited_where()
    assert places, "no citations found: the scan is looking in the wrong place"
    missing = {number: where[:3] for number, where in places.items() if number not in defined}
    assert not missing, f"cited but not a heading of {DOC.relative_to(ROOT)}: {missing}"


def test_no_number_is_defined_twice():
    numbers = headings(DOC.read_text(encoding="utf-8"))
    assert len(numbers) > 40
    assert len(numbers) == len(set(numbers)), sorted(n for n in set(numbers) if numbers.count(n) > 1)


def test_python_modules_that_cite_numbers_say_where_they_are_defined():
    """A reader of a module that cites `P7` or `§6.4` learns from the module where to look."""
    unnamed = []
    for path in scanned_files():
        if path.suffix == ".py" and citations(path.read_text(encoding="utf-8")):
            if "docs/protocol-mapping.md" not in path.read_text(encoding="utf-8"):
                unnamed.append(str(path.relative_to(ROOT)))
    assert not unnamed, f"cite the document's numbers without naming docs/protocol-mapping.md: {unnamed}"


def test_the_tests_the_document_names_exist():
    doc = DOC.read_text(encoding="utf-8")
    missing = [token for token in named_tests(doc) if not names_a_test(token)]
    assert not missing, f"{DOC.relative_to(ROOT)} names tests that do not exist: {missing}"


def named_tests(doc: str) -> list[str]:
    """The backticked names after each paragraph's `Tests:`: modules, test functions, fixtures."""
    names = []
    for paragraph in doc.split("\n\n"):
        _, found, named = paragraph.partition("Tests:")
        if found:
            names.extend(_BACKTICKED.findall(named))
    return names


def names_a_test(token: str) -> bool:
    """A path from the repository root, a test function, or a fixture name (may be a glob)."""
    if "/" in token:
        return (ROOT / token).is_file()
    if token.startswith("test_"):
        return any(f"def {token}(" in p.read_text(encoding="utf-8") for p in (ROOT / "tests").rglob("test_*.py"))
    return any(fnmatch.fnmatchcase(path.stem, token) for path in FIXTURES.rglob("*.json"))
