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
        """Per check (hot path): one clock read."""
        t = time.monotonic()
        second = int(t)
        if self.buckets and self.buckets[-1][0] == second:
            self.buckets[-1][1] += 1
        else:
            self.buckets.append([second, 1])
        self.lateness.append((t, lateness_ms))
        self.total += 1

    def last_minute(self) -> int:
        horizon = int(time.monotonic()) - self.window_s
        while self.buckets and self.buckets[0][0] <= horizon:
            self.buckets.popleft()
        return sum(c for _, c in self.buckets)

    def _ordered(self) -> list[float]:
        horizon = time.monotonic() - self.window_s
        return sorted(ms for t, ms in self.lateness if t >= horizon)

    def percentile(self, q: float) -> float:
        """Lateness percentile over the last `window_s` (of at most `samples` recent checks)."""
        return at_quantile(self._ordered(), q)

    def digest(self, points: int = 200) -> list[float]:
        """The window's lateness as `points` evenly spaced quantiles (rounded to 0.1 ms): what a
        worker publishes so `status` can merge workers into one distribution (weighted by each
        worker's checks) instead of taking the worst worker's percentile."""
        return _digest(self._ordered(), points)

    def figures(self, points: int = 200) -> dict:
        """p50, p99 and the digest of the window from one sort (the worker's report, each second)."""
        ordered = self._ordered()
        return {"lateness_p50_ms": round(at_quantile(ordered, 0.5), 1),
                "lateness_p99_ms": round(at_quantile(ordered, 0.99), 1),
                "lateness_digest": _digest(ordered, points)}


def _digest(ordered: list[float], points: int) -> list[float]:
    n = len(ordered)
    if n <= points:
        return [round(v, 1) for v in ordered]
    return [round(ordered[min(n - 1, int((i + 0.5) * n / points))], 1) for i in range(points)]


def at_quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def merged_percentile(digests: list[tuple[list[float], float]], q: float) -> float:
    """Percentile q of several digests, each (points, checks it stands for)."""
    weighted = sorted((v, checks / len(points)) for points, checks in digests if points and checks > 0
                      for v in points)
    total = sum(w for _, w in weighted)
    if not total:
        return 0.0
    target, acc = q * total, 0.0
    for value, w in weighted:
        acc += w
        if acc > target:
            return value
    return weighted[-1][0]
