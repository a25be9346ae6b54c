"""The hard deadline of one check: `async with Deadline(loop, seconds):` raises TimeoutError when
the block outlives it, with the semantics of `asyncio.timeout()` (the task is cancelled at the
deadline; a cancellation from anyone else still propagates as CancelledError).

Why not `asyncio.timeout()`: it looks the loop up twice per use (on CPython 3.11 each look-up is
a getpid() system call) and walks a state machine for rescheduling that a check never needs;
this is half its CPU per check. The caller passes the loop it already has.
"""
from __future__ import annotations

import asyncio
from types import TracebackType

_current_task = asyncio.current_task


class Deadline:
    """One-shot deadline for the current task (see module docstring); not reusable."""

    __slots__ = ("_loop", "_delay", "_task", "_handle", "_cancelling", "_expired")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self._loop = loop
        self._delay = delay
        self._expired = False

    async def __aenter__(self) -> Deadline:
        task = _current_task(self._loop)
        if task is None:
            raise RuntimeError("Deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        # self -> handle -> bound method -> self is a cycle; __aexit__ drops the handle
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(self._delay, self._expire)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        handle = self._handle
        if handle is not None:
            handle.cancel()
            self._handle = None
        # As asyncio.timeout: ours is the only new cancel request -> it is a timeout.
        if self._expired and self._task.uncancel() <= self._cancelling and \
                exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def _expire(self) -> None:
        self._handle = None
        self._expired = True
        self._task.cancel()
