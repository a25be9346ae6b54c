"""Crash-loop backoff of the supervisor, with a real engine and real signals: a worker that keeps
dying right after it is forked (an OOM-kill loop, simulated with SIGKILL) is restarted at once
after its first quick death, then after 1, 2, 4, 8 ... s (at most 30 s);
one that lived 5 s or more is replaced at once and its slot starts counting again from zero.
The supervisor stays up through it all and still exits 0 on SIGTERM."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import time

from tests.test_reliability import ready_pids, wait_until

QUICK_S = 5.0        # a worker dying younger than this counts as a quick death (supervisor.py)
LOOP_TICK_S = 0.5    # the supervisor looks at dead slots once per select() round
SLACK_S = 0.5        # process start-up and a busy machine
CRASH_LOOPING = re.compile(r"worker 0 is crash-looping: next start in ([\d.]+) s")


def backoff(failures: int) -> float:
    """supervisor.py's schedule: no wait after the first quick death, then 1, 2, 4 ... s, at most 30."""
    return min(2.0 ** (failures - 2), 30.0) if failures > 1 else 0.0


def children(pid: int) -> set[int]:
    """Child pids of `pid` (the supervisor forks from its main thread), zombies included."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


class Workers:
    """Sees each worker the moment the supervisor forks it, and times kill -> next fork."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.seen: set[int] = set()
        self.killed_at = 0.0

    async def next(self, timeout: float) -> tuple[int, float]:
        """(pid, seconds since the last kill) of the next worker the supervisor forks."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.engine.proc.poll() is not None:
                raise AssertionError(f"the supervisor exited ({self.engine.proc.returncode}):\n"
                                     f"{self.engine.output()[-3000:]}")
            new = children(self.engine.proc.pid) - self.seen
            if new:
                now = time.monotonic()
                assert len(new) == 1, f"one slot, yet several new workers: {new}"
                pid = new.pop()
                self.seen.add(pid)
                return pid, now - self.killed_at
            await asyncio.sleep(0.005)
        raise AssertionError(f"no new worker within {timeout} s:\n{self.engine.output()[-3000:]}")

    def kill(self, pid: int) -> None:
        self.killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)


async def test_crash_loop_backs_off_and_resets(engine):
    proc = engine("run", "--workers", "1")
    workers = Workers(proc)
    try:
        # 1. Every worker is killed the moment it appears: five quick deaths in a row.
        pid, _ = await workers.next(timeout=20)
        killed = []
        loop_gaps = []
        for failures in range(1, 6):
            workers.kill(pid)
            killed.append(pid)
            pid, gap = await workers.next(timeout=backoff(failures) + 5)
            loop_gaps.append(gap)
            assert proc.proc.poll() is None, "the supervisor died during the crash loop"

        # 2. The sixth worker is left alone: it boots, and lives past the quick-death window.
        survivor = pid
        born = time.monotonic()
        assert await wait_until(lambda: asyncio.sleep(0, survivor in ready_pids(proc.output())), 15), \
            f"the worker started after the crash loop never became ready:\n{proc.output()[-3000:]}"
        await asyncio.sleep(max(0.0, born + QUICK_S + 0.5 - time.monotonic()))

        # 3. Its death is not quick: replaced at once, and the count starts again from zero
        #    (first quick death: at once; second: 1 s).
        reset_gaps = []
        for _ in range(3):
            workers.kill(pid)
            killed.append(pid)
            pid, gap = await workers.next(timeout=5)
            reset_gaps.append(gap)

        # 4. The engine still works, and stops cleanly.
        last = pid
        assert await wait_until(lambda: asyncio.sleep(0, last in ready_pids(proc.output())), 15), \
            f"the last worker never became ready:\n{proc.output()[-3000:]}"
        assert proc.proc.poll() is None, "the supervisor died"
    finally:
        code = await proc.stop(signal.SIGTERM, timeout=20)
    out = proc.output()
    print(f"\ncrash loop: kill -> next worker {', '.join(f'{g:.2f}' for g in loop_gaps)} s "
          f"(backoff {', '.join(f'{backoff(f):.1f}' for f in range(1, 6))} s); after a 5 s life: "
          f"{', '.join(f'{g:.2f}' for g in reset_gaps)} s")
    assert code == 0, out[-3000:]

    # Gaps follow the schedule: never early, late by at most one supervisor round plus slack.
    for failures, gap in enumerate(loop_gaps, start=1):
        delay = backoff(failures)
        assert delay <= gap <= delay + LOOP_TICK_S + SLACK_S, (failures, loop_gaps)
    assert loop_gaps[0] < LOOP_TICK_S  # the first quick death is not delayed
    assert all(a < b for a, b in zip(loop_gaps, loop_gaps[1:])), loop_gaps  # each wait is longer
    assert loop_gaps[-2] > loop_gaps[0] + 3.5  # 4 s of backoff against none

    # After a worker lived past the quick-death window, the next kill is answered at once
    # (without the reset it would be 16 s), and the backoff restarts from its beginning.
    assert reset_gaps[0] < LOOP_TICK_S and reset_gaps[1] < LOOP_TICK_S, reset_gaps
    assert backoff(2) <= reset_gaps[2] <= backoff(2) + LOOP_TICK_S + SLACK_S, reset_gaps

    # The log tells the same story: every kill seen as a death, the backoffs announced.
    for pid in killed:
        assert f"worker 0 (pid {pid}) died (signal 9); replacing it" in out, pid
    announced = [float(d) for d in CRASH_LOOPING.findall(out)]
    assert announced == [backoff(f) for f in (2, 3, 4, 5, 2)] == [1.0, 2.0, 4.0, 8.0, 1.0], out[-3000:]
    assert "supervisor stopped" in out
