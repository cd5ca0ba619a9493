"""The fuzz harness's checks catch what each is for: sent to a server that gets one
thing wrong on purpose (tests/fuzz/misbehaving.py), each check fails with its own kind
of failure, and a server that gets everything right passes. A check that could not fail
would let the fuzz pass whatever the gateway did."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.harness import (
    BrokenStream,
    Fuzzer,
    Hang,
    KeyLogged,
    Ledger,
    NotAnAnswer,
    NotAnError,
    NotJSON,
    ServerError,
    Stalled,
)
from tests.fuzz.health import BOUND, Probe
from tests.fuzz.stack import CLIENT_KEY, spawn, wait_for, watched
from tests.fuzz.targets import JSON_HEADERS, MESSAGES, auth
from tests.fuzz.wire import Example
from tests.support.processes import free_port

# A hang is waited for this long here (the fuzz waits 20 s).
DEADLINE = 1.0


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzer]:
    directory = tmp_path_factory.mktemp("misbehaving")
    port = free_port()
    server = spawn("misbehaving", directory, "-m", "tests.fuzz.misbehaving", str(port))
    wait_for(server, "misbehaving listening")
    stack = watched(directory, server, f"http://127.0.0.1:{port}")
    try:
        yield Fuzzer(stack, Ledger(), deadline=DEADLINE)
    finally:
        stack.close()


def asking(how: str, *, stream: bool = False) -> Example:
    headers = (auth(), *JSON_HEADERS, ("x-misbehave", how.encode()))
    return Example(MESSAGES, b'{"model": "m", "messages": []}', headers, f"misbehave: {how}", stream)


@pytest.mark.parametrize(("how", "stream"), [("ok", False), ("ok-stream", True)])
def test_a_right_answer_passes(harness: Fuzzer, how: str, stream: bool) -> None:
    assert harness.run(asking(how, stream=stream)).status == 200


@pytest.mark.parametrize(
    ("how", "stream", "failure"),
    [
        ("500", False, ServerError),
        ("plain", False, NotJSON),
        ("bad-error", False, NotAnError),
        ("not-a-message", False, NotAnAnswer),
        ("ok", True, NotAnAnswer),  # a JSON message to a stream request
        ("broken-stream", True, BrokenStream),
        ("hang-stream", True, Hang),
        ("silent", False, Hang),
        ("log-key", False, KeyLogged),
        ("block", False, Stalled),
    ],
)
def test_each_check_catches_what_it_is_for(harness: Fuzzer, how: str, stream: bool, failure: type) -> None:
    with pytest.raises(failure):
        harness.run(asking(how, stream=stream))


def test_a_key_logged_in_two_pieces_counts(harness: Fuzzer) -> None:
    spoiled = CLIENT_KEY[:20].encode() + b"\x01" + CLIENT_KEY[20:].encode()
    example = Example(MESSAGES, b"{}", (("x-api-key", spoiled), *JSON_HEADERS, ("x-misbehave", b"log-key")), "", False)
    with pytest.raises(KeyLogged):
        harness.run(example)


@pytest.mark.parametrize(
    ("probe", "slow"),
    [
        (Probe(0.0, 0.01, 200, 0.01), False),
        (Probe(0.0, 0.3, 200, 0.25), True),  # the gateway computed while the probe waited
        (Probe(0.0, 0.3, 200, 0.0), False),  # the machine did not run the gateway: not its lag
        (Probe(0.0, 0.3, 200, None), True),  # no CPU figure (no /proc): the time decides
        (Probe(0.0, 0.05, 200, 0.05), False),
        (Probe(0.0, 0.01, 0, None), True),  # no answer at all
        (Probe(0.0, 0.01, 503, 0.0), True),
    ],
)
def test_which_probes_are_slow(probe: Probe, slow: bool) -> None:
    assert BOUND == 0.1
    assert probe.slow is slow
