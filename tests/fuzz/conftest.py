"""The stack every fuzz test sends to (one per module), and a summary of what the fuzz
saw at the end of the run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.harness import Fuzzer, Ledger
from tests.fuzz.health import BOUND
from tests.fuzz.profile import current
from tests.fuzz.stack import start_stack

LEDGER = pytest.StashKey[Ledger]()


def _ledger(config: pytest.Config) -> Ledger:
    if LEDGER not in config.stash:
        config.stash[LEDGER] = Ledger()
    return config.stash[LEDGER]


@pytest.fixture(scope="module")
def fuzzer(request: pytest.FixtureRequest, redis_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzer]:
    redis_server.flushall()
    stack = start_stack(tmp_path_factory.mktemp("fuzz"), redis_server.url)
    try:
        yield Fuzzer(stack, _ledger(request.config))
    finally:
        stack.close()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    ledger = config.stash.get(LEDGER, None)
    if ledger is None or not ledger.examples:
        return
    statuses = ", ".join(f"{status or 'none'}: {n}" for status, n in sorted(ledger.statuses.items()))
    write = terminalreporter.write_line
    write(f"fuzz ({current().name} profile): {ledger.examples} requests sent; statuses {statuses}")
    worst = ledger.worst_probe.describe()
    write(f"fuzz: slowest /healthz probe during a request: {worst} (bound {BOUND * 1000:.0f} ms)")
    if ledger.worst_during:
        write(f"fuzz: (during {ledger.worst_during})")
    for stall in ledger.unrepeated_stalls:
        write(f"fuzz: a slow probe that did not recur when the request was sent again: {stall}")
