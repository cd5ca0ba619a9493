"""Layering, read from the import graph of every module under `gateway/`.

- The pure layers (`protocols/`, `translate/`) reach, through every import they make,
  directly or through other gateway modules, nothing of the network, the event loop or
  a third-party library but orjson: they are functions of their input, tested without
  sockets.
- `store/` and `limiter/` reach nothing of HTTP.
- `translate/` never imports `backends/`: a backend uses a translator, not the reverse.

The graph is read from the source (every `import`, also inside functions; not those
under `if TYPE_CHECKING:`), so an import that runs only on one path counts too. Each pure
module is also imported alone in a fresh interpreter (as aiohttp's circular-import test
does), so an import cycle shows up here rather than as a failure elsewhere.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGE = ROOT / "gateway"

# The standard library a pure module may not reach: the network, the event loop, processes.
IO_STDLIB = frozenset(
    {
        "asyncio",
        "socket",
        "ssl",
        "selectors",
        "select",
        "http",
        "socketserver",
        "ftplib",
        "smtplib",
        "imaplib",
        "poplib",
        "telnetlib",
        "xmlrpc",
        "subprocess",
        "multiprocessing",
        "concurrent",
        "signal",
        "threading",
        "mmap",
    }
)
PURE_THIRD_PARTY = frozenset({"orjson"})
HTTP = frozenset(
    {
        "aiohttp",
        "httptools",
        "http",
        "gateway.backends",
        "gateway.handlers",
        "gateway.routes",
        "gateway.middleware",
        "gateway.streaming",
        "gateway.server",
        "gateway.app",
    }
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@cache
def imports_of(module: str) -> frozenset[str]:
    """Every module `module`'s source imports (dotted, as written; `from a import b` also
    gives `a.b`, which is a module when `b` is one)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for part in child.orelse:
                    visit(part)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                assert child.level == 0, f"{module}: relative import"
                found.add(child.module or "")
                found.update(f"{child.module}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(MODULES[module].read_text()))
    return frozenset(found)


def _gateway_targets(name: str) -> list[str]:
    """The gateway modules an import of `name` runs: it and every package above it."""
    parts = name.split(".")
    return [m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in MODULES]


@cache
def reach(module: str) -> frozenset[str]:
    """Every module `module` reaches, through gateway modules, as dotted names."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        for name in imports_of(current):
            if name not in seen:
                seen.add(name)
                todo.extend(t for t in _gateway_targets(name) if t not in seen or t == name)
        seen.add(current)
    # Packages above a module run first, as imports of it.
    return frozenset(seen)


def _top(name: str) -> str:
    return name.split(".")[0]


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


PURE = sorted(m for m in MODULES if _in(m, "gateway.protocols", "gateway.translate"))
STORAGE = sorted(m for m in MODULES if _in(m, "gateway.store", "gateway.limiter"))
TRANSLATE = sorted(m for m in MODULES if _in(m, "gateway.translate"))


def test_the_graph_sees_the_layers() -> None:
    assert "gateway.translate.messages_chat.stream" in PURE and "gateway.protocols.sse" in PURE
    assert "gateway.limiter.redis" in STORAGE and "gateway.store.redis" in STORAGE
    # The graph follows gateway modules: the Redis store reaches redis itself.
    assert "redis" in {_top(n) for n in reach("gateway.store.redis")}


@pytest.mark.parametrize("module", PURE)
def test_pure_layers_reach_no_io_and_no_third_party_but_orjson(module: str) -> None:
    outside = {_top(n) for n in reach(module) if _top(n) != "gateway"}
    third_party = {n for n in outside if n not in sys.stdlib_module_names} - PURE_THIRD_PARTY
    io = outside & IO_STDLIB
    assert not third_party and not io, f"{module} reaches {sorted(third_party | io)}"


@pytest.mark.parametrize("module", STORAGE)
def test_store_and_limiter_reach_nothing_of_http(module: str) -> None:
    http = sorted(n for n in reach(module) if _in(n, *HTTP))
    assert not http, f"{module} reaches {http}"


@pytest.mark.parametrize("module", TRANSLATE)
def test_translate_never_imports_backends(module: str) -> None:
    backends = sorted(n for n in reach(module) if _in(n, "gateway.backends"))
    assert not backends, f"{module} reaches {backends}"


CHECK = """
import importlib, sys
before = set(sys.modules)
importlib.import_module({module!r})
loaded = sorted(n for n in set(sys.modules) - before if n.split(".")[0] not in sys.stdlib_module_names
                and n.split(".")[0] not in {allowed!r})
if loaded:
    print(" ".join(loaded))
    sys.exit(1)
"""


@pytest.mark.parametrize("module", PURE)
def test_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK.format(module=module, allowed={"gateway", *PURE_THIRD_PARTY})],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{module}: {result.stdout.strip() or result.stderr.strip()}"
