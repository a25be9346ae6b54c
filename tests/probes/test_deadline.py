"""`Deadline` keeps asyncio.timeout()'s semantics (each test runs against both): its own expiry
is a TimeoutError, anyone else's cancellation stays a CancelledError, an unexpired block is
untouched."""
from __future__ import annotations

import asyncio

import pytest

from engine.probes.deadline import Deadline


@pytest.fixture(params=["Deadline", "asyncio.timeout"])
def deadline(request):
    if request.param == "Deadline":
        return lambda delay: Deadline(asyncio.get_running_loop(), delay)
    return asyncio.timeout


async def test_expiry_raises_timeout_error(deadline):
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with deadline(0.05):
            await asyncio.sleep(5)
    assert loop.time() - started < 1
    assert asyncio.current_task().cancelling() == 0  # its own cancel request was withdrawn


async def test_block_within_deadline_is_untouched(deadline):
    async with deadline(0.05):
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)  # the cancelled timer must not fire later


async def test_outer_cancel_stays_cancelled_error(deadline):
    async def body():
        async with deadline(5):
            await asyncio.sleep(5)

    task = asyncio.ensure_future(body())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_outer_cancel_at_expiry_stays_cancelled_error(deadline):
    async def body():
        async with deadline(0):  # expires on the next loop turn
            await asyncio.sleep(5)

    task = asyncio.ensure_future(body())
    await asyncio.sleep(0)  # the task is now inside the block
    task.cancel()  # a second cancel request, before the task resumes
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_inner_timeout_error_passes_through(deadline):
    with pytest.raises(TimeoutError, match="inner"):
        async with deadline(5):
            raise TimeoutError("inner")
