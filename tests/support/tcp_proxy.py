"""A TCP relay in front of a real server (Redis, in the tests that use it), counting the
connections it carries and, if asked, holding each answer back a while: a slow server
whose clients' connection use can be watched from outside."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_port: int, *, answer_delay: float = 0.0) -> None:
        """`answer_delay`: seconds each chunk from the server waits before it is relayed."""
        self.target_port = target_port
        self.answer_delay = answer_delay
        self.open = 0  # connections carried now
        self.peak = 0  # the most carried at once since the last `reset_peak()`
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._carry, "127.0.0.1", 0)
        return self

    def reset_peak(self) -> None:
        self.peak = self.open

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _carry(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            try:
                await asyncio.gather(
                    self._pipe(client_reader, server_writer, 0.0),
                    self._pipe(server_reader, client_writer, self.answer_delay),
                )
            finally:
                server_writer.close()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            client_writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(chunk)
                await writer.drain()
        # One side finished: let the other see the end too.
        with contextlib.suppress(OSError):
            writer.write_eof()
