"""A worker's rolling figures for `uptime-engine status`: checks in the last minute and recent
lateness percentiles (a bounded sample; O(1) per check)."""
from __future__ import annotations

import time
from collections import deque


class Rolling:
    def __init__(self, window_s: int = 60, samples: int = 4096) -> None:
        self.window_s = window_s
        self.buckets: deque[list[int]] = deque()  # [second, count]
        self.lateness: deque[float] = deque(maxlen=samples)
        self.total = 0

    def observe(self, lateness_ms: float) -> None:
        now = int(time.monotonic())
        if self.buckets and self.buckets[-1][0] == now:
            self.buckets[-1][1] += 1
        else:
            self.buckets.append([now, 1])
        self.lateness.append(lateness_ms)
        self.total += 1

    def last_minute(self) -> int:
        horizon = int(time.monotonic()) - self.window_s
        while self.buckets and self.buckets[0][0] <= horizon:
            self.buckets.popleft()
        return sum(c for _, c in self.buckets)

    def percentile(self, q: float) -> float:
        if not self.lateness:
            return 0.0
        ordered = sorted(self.lateness)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
