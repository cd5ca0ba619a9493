"""A `/healthz` prober in a process of its own: `python -m tests.fuzz.prober URL PID FILE`.

It asks the gateway (process PID) for `/healthz` every `PERIOD` seconds over one
kept-alive connection and appends each round trip to FILE as `start end status cpu`:
`time.monotonic()` seconds (the same clock in every process of the machine), the status
(0 when the probe failed), and the CPU seconds the gateway process used meanwhile (from
/proc; -1 where there is none). The fuzz tests read FILE to see whether the gateway's
event loop was kept busy while one of their requests was being served.

It runs apart from the test process so that what it measures is the gateway alone: the
tests' own work (generating examples, building multi-megabyte bodies) would otherwise
hold the interpreter and show up as lag that is not the gateway's. It exits when the
process that started it is gone.
"""

from __future__ import annotations

import http.client
import os
import sys
import time
from urllib.parse import urlsplit

# Often enough that any stall longer than the bound is seen by a probe in flight across
# it, rarely enough to cost the gateway next to nothing (~100 tiny requests a second).
PERIOD = 0.01
TIMEOUT = 30.0
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU time of process `pid` so far, or None without /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    # After the command name: state is field 3 of proc(5), utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / TICK


def probe(connection: http.client.HTTPConnection) -> int:
    connection.request("GET", "/healthz")
    response = connection.getresponse()
    response.read()
    return response.status


def main(url: str, pid: int, path: str) -> None:
    parent = os.getppid()
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=TIMEOUT)
    with open(path, "a", buffering=1) as out:
        while os.getppid() == parent:
            cpu_before, start = cpu_seconds(pid), time.monotonic()
            try:
                status = probe(connection)
            except (OSError, http.client.HTTPException):
                status = 0
                connection.close()  # the next probe opens a new connection
            end, cpu_after = time.monotonic(), cpu_seconds(pid)
            cpu = -1.0 if cpu_before is None or cpu_after is None else cpu_after - cpu_before
            out.write(f"{start:.6f} {end:.6f} {status} {cpu:.3f}\n")
            time.sleep(PERIOD)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
