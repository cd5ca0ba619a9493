"""Reading the prober's record (tests/fuzz/prober.py): which `/healthz` probes were in
flight while a fuzz request was, and which of them the gateway kept waiting.

A probe is *slow* when it got no answer, or when it took longer than the bound and the
gateway process spent at least the bound in CPU meanwhile: its event loop was busy with
something else (the loop is one thread: while it computes, nothing is answered). A probe
that took long while the gateway hardly ran is the machine's doing (the gateway was not
scheduled: other processes of a loaded machine, or the prober itself), not the gateway's
lag, and is not counted against it. Where /proc is missing (no CPU figure), the time
alone decides."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

# The bound on a worker's answer to /healthz while it serves anything at all.
BOUND = 0.100


@dataclass(frozen=True)
class Probe:
    start: float
    end: float
    status: int  # 0: the probe got no answer
    cpu: float | None  # CPU seconds the gateway used during the probe (None: not known)

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def slow(self) -> bool:
        if self.status != 200:
            return True
        return self.seconds > BOUND and (self.cpu is None or self.cpu >= BOUND)

    def describe(self) -> str:
        answer = f"status {self.status}" if self.status else "no answer"
        cpu = "" if self.cpu is None else f", the gateway busy {self.cpu * 1000:.0f} ms of it"
        return f"/healthz took {self.seconds * 1000:.0f} ms ({answer}{cpu})"


class ProbeLog:
    """The probes recorded so far, read incrementally from the prober's file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.probes: list[Probe] = []

    def _read(self) -> None:
        with self.path.open("rb") as file:
            file.seek(self._offset)
            data = file.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # a line the prober is still writing
        for line in lines:
            start, end, status, cpu = line.split()
            self.probes.append(Probe(float(start), float(end), int(status), float(cpu) if float(cpu) >= 0 else None))

    def wait_past(self, moment: float, timeout: float) -> bool:
        """Until a probe started after `moment` has been answered (so every probe that
        overlapped anything before `moment` is on record); False if none in `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            self._read()
            if self.probes and self.probes[-1].start > moment:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)

    def during(self, start: float, end: float) -> list[Probe]:
        """The probes in flight at some moment between `start` and `end`."""
        found = []
        for probe in reversed(self.probes):
            if probe.end < start:
                break
            if probe.start < end:
                found.append(probe)
        return found
