"""Which partitions to claim from, how much, and when: the worker's claim pacing.

- `ClaimPlan` remembers each partition's next due time (returned by every claim and finish
  script) and asks only the partitions that have something due, plus every partition once per
  `poll_ms` (another worker or the scheduler may have added work). Claims are at least
  `claim_min_ms` apart unless the previous one came back full, so a light load does not make a
  worker spin on round trips that return one job each.
"""
from __future__ import annotations

import time


class ClaimPlan:
    def __init__(self, partitions: int, claim_batch: int, poll_ms: int, claim_min_ms: int,
                 offset: int = 0) -> None:
        self.partitions = partitions
        self.batch = claim_batch
        self.poll = poll_ms / 1000
        self.min_gap = claim_min_ms / 1000
        self.next_due = [0] * partitions   # server ms; 0 = unknown (ask), -1 = nothing waiting
        self.offset_ms = 0.0                # server clock minus local clock
        self.last_poll = 0.0                # monotonic time every partition was last asked
        self.last_claim = 0.0
        self.was_full = False
        self.rotate = offset

    def server_now_ms(self) -> float:
        return time.time() * 1000 + self.offset_ms

    def learn(self, partition: int, next_due: int) -> None:
        """A script told us the partition's earliest due time (-1: empty)."""
        known = self.next_due[partition]
        if next_due < 0 or known <= 0 or next_due < known:
            self.next_due[partition] = next_due
        # else keep the earlier time we already knew of

    def claimed(self, wants: list[tuple[int, int]], replies: dict[int, int], got: dict[int, int],
                server_now_ms: int, sent: float, received: float) -> None:
        """Record a claim round trip: each partition's next due and whether any came back full."""
        offset = server_now_ms - (sent + received) / 2 * 1000
        self.offset_ms = offset if self.last_claim == 0 else 0.9 * self.offset_ms + 0.1 * offset
        self.was_full = False
        for p, n in wants:
            self.next_due[p] = replies.get(p, -1)
            if got.get(p, 0) >= n:
                self.was_full = True
                self.next_due[p] = 0  # more may be due right now

    def wants(self, budget: int) -> list[tuple[int, int]]:
        """(partition, limit) pairs to claim now, at most `budget` jobs in all."""
        now = time.monotonic()
        if budget <= 0:
            return []
        if now - self.last_poll >= self.poll:
            ready = list(range(self.partitions))
            self.last_poll = now
        else:
            horizon = self.server_now_ms() + 1
            ready = [p for p, due in enumerate(self.next_due) if 0 <= due <= horizon]
        if not ready:
            return []
        self.last_claim = now
        if budget >= len(ready):
            per = min(self.batch, budget // len(ready))
            return [(p, per) for p in ready]
        start = self.rotate % len(ready)
        self.rotate += budget
        return [(ready[(start + i) % len(ready)], 1) for i in range(budget)]

    def sleep_s(self) -> float:
        """How long to wait before the next claim."""
        if self.was_full:
            return 0.0
        now = time.monotonic()
        wake = self.last_poll + self.poll
        server_now = self.server_now_ms()
        soonest = min((d for d in self.next_due if d >= 0), default=None)
        if soonest is not None:
            wake = min(wake, now + max(0.0, (soonest - server_now) / 1000))
        wake = max(wake, self.last_claim + self.min_gap)
        return max(0.0, wake - now)
