"""The access log's sink: lines gathered for a moment (`FLUSH_AFTER`) into one write."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from gateway.observe import access_log
from gateway.observe.access_log import AccessLog


class CountingStream(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        return super().write(data)


@pytest.fixture(autouse=True)
def quick_flush(monkeypatch):
    monkeypatch.setattr(access_log, "FLUSH_AFTER", 0.02)


async def test_lines_of_a_moment_go_out_in_one_write():
    stream = CountingStream()
    log = AccessLog(stream)
    for n in range(3):
        log.write({"request_id": f"req_{n}", "status": 200})
        await asyncio.sleep(0)  # several turns of the loop: still gathered
    assert stream.getvalue() == b""
    await asyncio.sleep(0.05)
    assert stream.writes == 1
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == ["req_0", "req_1", "req_2"]


async def test_a_large_backlog_is_written_at_once():
    stream = CountingStream()
    log = AccessLog(stream)
    line = {"path": "x" * 1000}
    for _ in range(access_log.HIGH_WATER // 1000 + 1):
        log.write(line)
    assert stream.writes == 1  # the high-water mark, before the moment ends
    await asyncio.sleep(0.05)
    assert len(stream.getvalue().splitlines()) == access_log.HIGH_WATER // 1000 + 1


def test_without_a_running_loop_a_line_is_written_at_once():
    stream = CountingStream()
    AccessLog(stream).write({"status": 200})
    assert json.loads(stream.getvalue()) == {"status": 200}


async def test_a_failing_stream_costs_the_line_not_the_request(caplog):
    stream = io.BytesIO()
    stream.close()
    log = AccessLog(stream)
    log.write({"status": 200})
    await asyncio.sleep(0.05)  # the flush fails, is logged, raises nothing
    assert "access log: could not write" in caplog.text


def test_without_a_stream_lines_go_to_the_logger(caplog):
    caplog.set_level(logging.INFO, logger="gateway.access")
    AccessLog().write({"status": 200})
    assert [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"] == [{"status": 200}]


@pytest.mark.parametrize(("level", "enabled"), [(logging.INFO, True), (logging.WARNING, False)])
def test_the_logger_level_turns_it_on_and_off(level, enabled, caplog):
    caplog.set_level(level, logger="gateway.access")  # what `gateway serve --log-level` sets
    assert AccessLog(io.BytesIO()).enabled() is enabled
