"""A worker's rolling figures for `uptime-engine status`: checks in the last minute and recent
lateness percentiles (a bounded sample; O(1) per check)."""
from __future__ import annotations

import time
from collections import deque


class Rolling:
    def __init__(self, window_s: int = 60, samples: int = 4096) -> None:
        self.window_s = window_s
        self.buckets: deque[list[int]] = deque()  # [second, count]
        self.lateness: deque[tuple[float, float]] = deque(maxlen=samples)  # (monotonic, ms)
        self.total = 0

    def observe(self, lateness_ms: float) -> None:
        now = int(time.monotonic())
        if self.buckets and self.buckets[-1][0] == now:
            self.buckets[-1][1] += 1
        else:
            self.buckets.append([now, 1])
        self.lateness.append((time.monotonic(), lateness_ms))
        self.total += 1

    def last_minute(self) -> int:
        horizon = int(time.monotonic()) - self.window_s
        while self.buckets and self.buckets[0][0] <= horizon:
            self.buckets.popleft()
        return sum(c for _, c in self.buckets)

    def percentile(self, q: float) -> float:
        """Lateness percentile over the last `window_s` (of at most `samples` recent checks)."""
        horizon = time.monotonic() - self.window_s
        ordered = sorted(ms for t, ms in self.lateness if t >= horizon)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
