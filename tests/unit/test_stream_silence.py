"""The pump's silence timer: one timer per stream, interrupting only a read that waited too long."""

from __future__ import annotations

import asyncio

import pytest

from gateway.streaming import _Silence


async def _read(silence: _Silence, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future) -> str:
    silence.waiting_since = loop.time()
    try:
        return await waiter
    except asyncio.CancelledError:
        if silence.was_cause():
            return "silent"
        raise
    finally:
        silence.waiting_since = None


async def test_a_read_that_waits_too_long_is_interrupted_and_the_task_is_not_left_cancelled():
    loop = asyncio.get_running_loop()

    async def pump() -> tuple[str, int]:
        silence = _Silence(loop, 0.05)
        try:
            outcome = await _read(silence, loop, loop.create_future())
            return outcome, asyncio.current_task().cancelling()
        finally:
            silence.stop()

    assert await pump() == ("silent", 0)


async def test_reads_that_keep_arriving_are_never_interrupted():
    loop = asyncio.get_running_loop()
    silence = _Silence(loop, 0.05)
    try:
        for _ in range(10):  # 0.15 s of stream in all, no read longer than 0.015 s
            waiter = loop.create_future()
            loop.call_later(0.015, waiter.set_result, "data")
            assert await _read(silence, loop, waiter) == "data"
    finally:
        silence.stop()
    assert not silence.fired


async def test_a_cancellation_from_elsewhere_propagates():
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    async def pump() -> str:
        silence = _Silence(loop, 10.0)
        try:
            started.set()
            return await _read(silence, loop, loop.create_future())
        finally:
            silence.stop()

    task = asyncio.create_task(pump())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_from_elsewhere_in_the_same_turn_as_the_timer_still_propagates():
    loop = asyncio.get_running_loop()

    async def pump() -> str:
        silence = _Silence(loop, 0.05)
        try:
            return await _read(silence, loop, loop.create_future())
        finally:
            silence.stop()

    task = asyncio.create_task(pump())
    await asyncio.sleep(0)
    # Cancel from outside at the timer's own moment: both requests land before the task runs.
    loop.call_at(task.get_loop().time() + 0.05, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_shorten_moves_the_deadline_forward():
    loop = asyncio.get_running_loop()
    silence = _Silence(loop, 10.0)
    try:
        silence.shorten(0.05)
        assert await _read(silence, loop, loop.create_future()) == "silent"  # 0.05 s, not 10
    finally:
        silence.stop()
