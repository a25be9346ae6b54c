"""The whole pipeline on the real services: PostgreSQL monitors -> scheduler -> Redis queue ->
worker probes against a loopback target -> ClickHouse rows and PostgreSQL statuses."""
from __future__ import annotations

import asyncio
import signal
import time

import pytest

from engine.admin import insert_monitors, normalize
from tests.checks import judge_ticks, seed_tcp, tick_counts
from tests.conftest import TEST_DB, ch_rows
from tests.targets import free_port, start_target

FAST = {"UE_QUEUE_BACKOFF_MS": "200", "UE_SINKS_FLUSH_MS": "200", "UE_SCHEDULER_SYNC_MS": "300"}


async def add(conn, **row) -> int:
    (mid,) = await insert_monitors(conn, [normalize(row)])
    return mid


async def run_for(engine, runner, seconds: float):
    """Start the engine, let it check for `seconds` after its first sync, stop it (exit 0) and
    the target."""
    proc = engine(**FAST)
    try:
        await proc.wait_for_log("queue ready")
        await asyncio.sleep(seconds)
    finally:
        assert await proc.stop() == 0
        await runner.cleanup()
    return proc


async def statuses(conn) -> dict[int, dict]:
    return {r["monitor_id"]: dict(r) for r in await conn.fetch("SELECT * FROM monitor_status")}


async def test_verdicts_statuses_and_rows(db, engine, ch):
    runner, port = await start_target(slow_s=3)
    base = f"http://127.0.0.1:{port}"
    closed = free_port()
    m = {
        "ok": await add(db, url=f"{base}/ok", interval_seconds=2, retries=1),
        "503": await add(db, url=f"{base}/503", interval_seconds=2, retries=1),
        "slow": await add(db, url=f"{base}/slow", interval_seconds=2, timeout_ms=500, retries=1),
        "kw_yes": await add(db, url=f"{base}/ok", keyword="brown fox", interval_seconds=2, retries=1),
        "kw_no": await add(db, url=f"{base}/ok", keyword="lazy dog", interval_seconds=2, retries=1),
        "redirects": await add(db, url=f"{base}/hop/3", interval_seconds=2, retries=1),
        "tcp_open": await add(db, type="tcp", host="127.0.0.1", port=port, interval_seconds=2, retries=1),
        "tcp_closed": await add(db, type="tcp", host="127.0.0.1", port=closed, interval_seconds=2, retries=1),
        "dns": await add(db, url="http://nonexistent.invalid/", interval_seconds=2, retries=1, timeout_ms=2000),
        "disabled": await add(db, url=f"{base}/ok", interval_seconds=1, enabled=False),
    }
    proc = await run_for(engine, runner, 6)
    st = await statuses(db)
    expect = {"ok": "up", "503": "down", "slow": "down", "kw_yes": "up", "kw_no": "down",
              "redirects": "up", "tcp_open": "up", "tcp_closed": "down", "dns": "down",
              "disabled": "pending"}
    assert {name: st[mid]["status"] for name, mid in m.items()} == expect
    assert st[m["503"]]["last_status_code"] == 503 and st[m["redirects"]]["last_status_code"] == 200
    rows = await ch_rows(ch, f"SELECT monitor_id, attempt, ok, error_kind, scheduled_at FROM {TEST_DB}.check_results")
    kinds = {name: {r["error_kind"] for r in rows if r["monitor_id"] == mid} for name, mid in m.items()}
    assert kinds == {"ok": {""}, "503": {"http_status"}, "slow": {"timeout"}, "kw_yes": {""},
                     "kw_no": {"keyword"}, "redirects": {""}, "tcp_open": {""}, "tcp_closed": {"refused"},
                     "dns": {"dns"}, "disabled": set()}
    # Every failing tick has attempts 1..retries+1 (retries=1): a down status needs both.
    for name in ("503", "kw_no", "tcp_closed"):
        ticks: dict[str, list[int]] = {}
        for r in rows:
            if r["monitor_id"] == m[name]:
                ticks.setdefault(r["scheduled_at"], []).append(r["attempt"])
        complete = [sorted(a) for a in ticks.values() if len(a) == 2]
        assert complete and all(a == [1, 2] for a in complete), (name, ticks)
        assert all(sorted(a) in ([1], [1, 2]) for a in ticks.values()), (name, ticks)
        assert st[m[name]]["consecutive_failures"] >= 1
    assert all(r["ok"] == 1 for r in rows if r["monitor_id"] == m["ok"])


async def test_each_monitor_checked_once_per_tick(db, engine, ch):
    """A few hundred TCP monitors at 1-5 s for 15+ s: every tick in the window checked exactly once."""
    runner, port = await start_target()
    ids = await seed_tcp(db, port, 300, intervals=(1, 2, 3, 4, 5))
    proc = engine(**FAST)
    try:
        await proc.wait_for_log("queue ready")
        start = time.time()
        await asyncio.sleep(18)
        end = time.time()
    finally:
        assert await proc.stop() == 0
        await runner.cleanup()
    # Judge a window well inside the run: from 2 s after start to 2 s before the end.
    missing, extra, expected = judge_ticks(await tick_counts(ch, TEST_DB), ids, start + 2, end - 2)
    assert (missing, extra) == (0, 0)
    assert expected > 300 * 14 / 3 * 0.9


async def test_changes_take_effect_while_running(db, engine, ch):
    runner, port = await start_target()
    a = await add(db, type="tcp", host="127.0.0.1", port=port, interval_seconds=5, retries=0)
    b = await add(db, type="tcp", host="127.0.0.1", port=port, interval_seconds=1, retries=0)
    proc = engine(**FAST)
    try:
        await proc.wait_for_log("queue ready")
        await asyncio.sleep(2)
        await db.execute("UPDATE monitors SET interval_seconds = 1 WHERE id = $1", a)
        await db.execute("UPDATE monitors SET enabled = false WHERE id = $1", b)
        changed = time.time()
        await asyncio.sleep(8)
    finally:
        assert await proc.stop() == 0
        await runner.cleanup()
    rows = await ch_rows(ch, f"SELECT monitor_id, toUInt32(scheduled_at) AS tick "
                             f"FROM {TEST_DB}.check_results ORDER BY tick")
    settle = changed + 3
    a_after = [r["tick"] for r in rows if r["monitor_id"] == a and r["tick"] > settle]
    b_after = [r["tick"] for r in rows if r["monitor_id"] == b and r["tick"] > settle]
    assert len(a_after) >= 4 and max(y - x for x, y in zip(a_after, a_after[1:])) == 1
    assert b_after == []
    assert "Scheduled monitor %d to run every 1 seconds" % a in proc.output()


async def test_sigterm_flushes_pending_results(db, engine, ch):
    runner, port = await start_target()
    mid = await add(db, type="tcp", host="127.0.0.1", port=port, interval_seconds=1, retries=0)
    proc = engine(**{**FAST, "UE_SINKS_FLUSH_MS": "600000"})  # nothing flushes on its own
    try:
        await proc.wait_for_log("queue ready")
        await asyncio.sleep(3)
        before = await ch_rows(ch, f"SELECT count() AS n FROM {TEST_DB}.check_results")
        assert before[0]["n"] == 0
    finally:
        code = await proc.stop(signal.SIGTERM)
        await runner.cleanup()
    assert code == 0
    after = await ch_rows(ch, f"SELECT count() AS n FROM {TEST_DB}.check_results WHERE monitor_id = {mid}")
    assert after[0]["n"] >= 2
    assert (await statuses(db))[mid]["status"] == "up"


async def test_malformed_rows_are_reported_once_and_lose_nothing(db, engine, ch):
    runner, port = await start_target()
    good = await add(db, type="tcp", host="127.0.0.1", port=port, interval_seconds=1, retries=0)
    bad = {}
    for name, sql in {
        "interval": "INSERT INTO monitors (type, url, interval_seconds) VALUES ('http', 'http://127.0.0.1/', 0)",
        "url": "INSERT INTO monitors (type, url, interval_seconds) VALUES ('http', 'ftp://x/', 1)",
        "type": "INSERT INTO monitors (type, host, port, interval_seconds) VALUES ('icmp', 'x', 1, 1)",
        "port": "INSERT INTO monitors (type, host, port, interval_seconds) VALUES ('tcp', '127.0.0.1', 70000, 1)",
        "status": ("INSERT INTO monitors (type, url, expected_status, interval_seconds) "
                   "VALUES ('http', 'http://127.0.0.1/', '2xx;lol', 1)"),
        "headers": """INSERT INTO monitors (type, url, headers, interval_seconds) VALUES ('http', 'http://127.0.0.1/', '{"a": 1}', 1)""",
    }.items():
        bad[name] = await db.fetchval(sql + " RETURNING id")
    proc = await run_for(engine, runner, 3)
    out = proc.output()
    for name, mid in bad.items():
        lines = [l for l in out.splitlines() if f"skipping invalid monitor: monitor {mid}:" in l]
        assert len(lines) == 1, (name, lines)  # once, not once per sync
    checked = {r["monitor_id"] for r in await ch.query(f"SELECT DISTINCT monitor_id FROM {TEST_DB}.check_results")}
    assert checked == {good}
    assert "Traceback" not in out
