"""The access log: one JSON object per request, one per line.

`gateway serve` writes the lines straight to a byte stream (stderr) without the `logging`
module, gathered for up to `FLUSH_AFTER` seconds (or `HIGH_WATER` bytes) into one write,
as nginx's `access_log ... buffer= flush=` does: a LogRecord, a formatter and a write per
line cost about a tenth of the gateway's CPU per small request (measured with bench/),
a write per turn of the event loop still a tenth of that. Elsewhere (tests, an embedding
application) the lines go to the `gateway.access` logger.

Either way the `gateway.access` logger's level decides: at WARNING and above there is no
access log (`gateway serve --log-level warning`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, BinaryIO

import orjson

logger = logging.getLogger("gateway.access")

# Lines wait at most this long, or until this many bytes wait, before they are written.
FLUSH_AFTER = 0.1
HIGH_WATER = 64 * 1024


class AccessLog:
    def __init__(self, stream: BinaryIO | None = None) -> None:
        """`stream`: where lines go, as bytes; None: the `gateway.access` logger."""
        self._stream = stream
        self._pending: list[bytes] = []
        self._size = 0
        self._scheduled = False

    def enabled(self) -> bool:
        return logger.isEnabledFor(logging.INFO)

    def write(self, line: dict[str, Any]) -> None:
        if self._stream is None:
            logger.info(orjson.dumps(line).decode())
            return
        data = orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
        self._pending.append(data)
        self._size += len(data)
        if self._size >= HIGH_WATER:
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_later(FLUSH_AFTER, self.flush)
                self._scheduled = True
            except RuntimeError:  # no loop running (shutting down): write now
                self.flush()

    def flush(self) -> None:
        """Write what waits (also at shutdown: the app's cleanup calls it)."""
        self._scheduled = False
        stream = self._stream
        if stream is None or not self._pending:  # lines wait only when there is a stream
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError) as exc:  # a closed or full stream must not fail requests
            logging.getLogger("gateway").warning("access log: could not write %d bytes (%s)", len(data), exc)
