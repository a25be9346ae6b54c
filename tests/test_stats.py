"""Lateness figures for `status`: per-worker digests merged into one distribution."""
from __future__ import annotations

import random

from engine.admin import _add_worker, _host, _rounded
from engine.stats import Rolling, at_quantile, merged_percentile


def worker(checks: int, lo: float, hi: float, seed: int) -> tuple[Rolling, list[float]]:
    rnd = random.Random(seed)
    values = [rnd.uniform(lo, hi) for _ in range(checks)]
    r = Rolling()
    for v in values:
        r.observe(v)
    return r, values


def test_merged_percentiles_match_the_pooled_checks():
    """A busy, punctual worker and a quiet, late one: the merged p50 is the busy worker's and the
    merged p99 the late one's tail, as if every check were pooled (the worst worker's p50 would be
    ~750 ms)."""
    fast, fast_values = worker(9000, 0, 10, 1)
    slow, slow_values = worker(1000, 500, 1000, 2)
    pooled = sorted(fast_values + slow_values)
    digests = [(fast.digest(), 9000), (slow.digest(), 1000)]
    assert len(digests[0][0]) == 200
    for q in (0.5, 0.9, 0.99):
        exact = at_quantile(pooled, q)
        merged = merged_percentile(digests, q)
        assert abs(merged - exact) <= 0.02 * (exact + 10), (q, merged, exact)
    assert slow.percentile(0.5) > 700 and merged_percentile(digests, 0.5) < 10


def test_status_merges_workers_and_still_reads_older_ones():
    fast, _ = worker(9000, 0, 10, 3)
    slow, _ = worker(1000, 500, 1000, 4)
    h = _host()
    for r, checks in ((fast, 9000), (slow, 1000)):
        _add_worker(h, {"checks_1m": checks, "lateness_digest": r.digest(),
                        "lateness_p50_ms": r.percentile(0.5), "lateness_p99_ms": r.percentile(0.99)}, 0.0)
    out = _rounded(h)
    assert out["lateness_p50_ms"] < 10 and 900 < out["lateness_p99_ms"] <= 1000
    assert not [k for k in out if k.startswith("_")]  # internals stay out of `status --json`
    # A worker of an earlier version publishes percentiles only: they count as an upper bound.
    _add_worker(h, {"checks_1m": 10, "lateness_p50_ms": 42.0, "lateness_p99_ms": 50.0}, 0.0)
    assert _rounded(h)["lateness_p50_ms"] == 42.0
