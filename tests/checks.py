"""Assertions shared by the end-to-end tests: seeding monitors and judging ticks in ClickHouse."""
from __future__ import annotations

import re

from engine.admin import insert_monitors, normalize
from engine.queue import phase_ms

READY = re.compile(r"worker (\d+) is ready \(id [^/]+/(\d+)")


async def seed_tcp(conn, port: int, count: int, intervals=(1,), **extra) -> dict[int, int]:
    """`count` TCP monitors at 127.0.0.1:port; returns {id: interval_ms}."""
    rows = [normalize({"type": "tcp", "host": "127.0.0.1", "port": port, "retries": 0,
                       "interval_seconds": intervals[i % len(intervals)], **extra}) for i in range(count)]
    ids = await insert_monitors(conn, rows)
    return {mid: row["interval_seconds"] * 1000 for mid, row in zip(ids, rows)}


async def tick_counts(ch, database: str) -> dict[int, dict[int, int]]:
    """{monitor_id: {tick second: number of first attempts}} from check_results."""
    rows = await ch.query(f"SELECT monitor_id, toUInt32(scheduled_at) AS tick, count() AS n "
                          f"FROM {database}.check_results WHERE attempt = 1 GROUP BY monitor_id, tick")
    seen: dict[int, dict[int, int]] = {}
    for r in rows:
        seen.setdefault(r["monitor_id"], {})[r["tick"]] = r["n"]
    return seen


def judge_ticks(seen: dict[int, dict[int, int]], ids: dict[int, int], lo: float, hi: float) -> tuple[int, int, int]:
    """(missing, extra, expected) ticks of `ids` strictly inside the window [lo, hi] (seconds):
    every tick t0 + k*interval must have exactly one first attempt."""
    lo_ms, hi_ms = int(lo * 1000), int(hi * 1000)
    missing = extra = expected_total = 0
    for mid, interval in ids.items():
        phase = phase_ms(mid, interval)
        first = lo_ms + (phase - lo_ms) % interval
        expected = {t // 1000 for t in range(first, hi_ms, interval)}
        expected = {t for t in expected if lo_ms // 1000 < t < hi_ms // 1000}
        ticks = seen.get(mid, {})
        got = {t for t in ticks if lo_ms // 1000 < t < hi_ms // 1000}
        missing += len(expected - got)
        extra += len(got - expected) + sum(ticks[t] - 1 for t in got)
        expected_total += len(expected)
    return missing, extra, expected_total
