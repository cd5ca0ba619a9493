"""Layering: the pure layers (gateway/protocols, gateway/translate) import no I/O library.

Each module is imported alone in a fresh interpreter (as aiohttp's circular-import test
does), so an import cycle or a stray `import aiohttp` inside a translator shows up here
rather than as a slow, socket-bound unit test elsewhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PURE_PACKAGES = ("gateway/protocols", "gateway/translate")
FORBIDDEN = ("aiohttp", "redis", "prometheus_client")

CHECK = """
import importlib, sys
importlib.import_module({module!r})
forbidden = {forbidden!r}
loaded = sorted(n for n in sys.modules if n.split(".")[0] in forbidden)
if loaded:
    print(" ".join(loaded))
    sys.exit(1)
"""


def pure_modules() -> list[str]:
    modules = []
    for package in PURE_PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            dotted = package.replace("/", ".")
            modules.append(dotted if path.stem == "__init__" else f"{dotted}.{path.stem}")
    return modules


def test_pure_modules_found() -> None:
    found = pure_modules()
    assert "gateway.translate.chat_request" in found and "gateway.protocols.messages" in found


@pytest.mark.parametrize("module", pure_modules())
def test_imports_alone_without_io_libraries(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK.format(module=module, forbidden=FORBIDDEN)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{module}: {result.stdout.strip() or result.stderr.strip()}"
