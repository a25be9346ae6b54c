"""Failures with real processes, real signals and real servers: killed and hung workers, several
probe hosts, outages of ClickHouse / PostgreSQL / the queue store, SIGTERM and SIGHUP under load.
Each test prints its measured figure (recovery time, lost results) for the closing notes."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from datetime import datetime, timezone

import asyncpg
import pytest

from engine.migrate import migrate_clickhouse, migrate_postgres
from engine.queue import history as job_history
from engine.sinks.clickhouse import ClickHouse
from tests.checks import READY, judge_ticks, seed_tcp, tick_counts
from tests.conftest import TEST_DB
from tests.targets import start_target

FAST = {"UE_QUEUE_BACKOFF_MS": "200", "UE_SINKS_FLUSH_MS": "300", "UE_SCHEDULER_SYNC_MS": "300"}


def ready_pids(output: str) -> list[int]:
    return [int(pid) for _, pid in READY.findall(output)]


def log_time(output: str, text: str, after: float = 0.0) -> float:
    """Wall time of the first log line containing `text` logged at or after `after`."""
    for line in output.splitlines():
        if text in line:
            t = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=timezone.utc)
            if t.timestamp() >= after:
                return t.timestamp()
    raise AssertionError(f"{text!r} not logged after {after}")


async def wait_until(predicate, timeout: float, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(step)
    return False


async def test_killed_worker_is_replaced_and_nothing_goes_unchecked(db, engine, ch):
    runner, port = await start_target()
    ids = await seed_tcp(db, port, 200, intervals=(1, 2))
    proc = engine("run", "--workers", "2", **FAST)
    try:
        await proc.wait_for_log("queue ready")
        start = time.time()
        await proc.wait_for_log("worker 1 is ready")
        await asyncio.sleep(3)
        victim = ready_pids(proc.output())[0]
        killed = time.time()
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: asyncio.sleep(0, len(ready_pids(proc.output())) >= 3), 10)
        replaced = log_time(proc.output(), "is ready", after=killed) - killed
        await asyncio.sleep(8)
        end = time.time()
    finally:
        assert await proc.stop() == 0
        await runner.cleanup()
    assert "died (signal 9); replacing it" in proc.output()
    seen = await tick_counts(ch, TEST_DB)
    # No monitor unchecked for longer than its interval plus a few seconds.
    worst = 0
    for mid, interval in ids.items():
        ticks = sorted(t for t in seen.get(mid, {}) if start + 1 < t < end - 1)
        gaps = [b - a for a, b in zip(ticks, ticks[1:])]
        assert ticks and max(gaps) <= interval / 1000 + 3, (mid, ticks)
        worst = max(worst, max(gaps) - interval / 1000)
    # Results of acknowledged checks were on disk (write-ahead) and are sent by the next worker;
    # unacknowledged jobs were released and run again: no tick may be missing.
    missing, extra, expected = judge_ticks(seen, ids, start + 1, end - 1)
    print(f"\nkill -9: worker replaced in {replaced:.2f} s; worst extra gap {worst:.0f} s; "
          f"{missing} of {expected} ticks missing, {extra} written twice")
    assert missing == 0
    assert extra <= 5  # only a result written ahead whose ack the kill cut off can run twice


async def test_two_probe_hosts_share_one_queue(db, engine, ch):
    runner, port = await start_target()
    ids = await seed_tcp(db, port, 300, intervals=(1,))
    a = engine("run", "--workers", "1", "--probe-id", "host-a", **FAST)
    b = engine("run", "--workers", "1", "--probe-id", "host-b", **FAST)
    try:
        await a.wait_for_log("worker 0 is ready")
        await b.wait_for_log("worker 0 is ready")
        start = time.time()
        await asyncio.sleep(20)
        end = time.time()
        leaders = sorted(p.output().count("this process is the scheduler") for p in (a, b))
    finally:
        assert await a.stop() == 0 and await b.stop() == 0
        await runner.cleanup()
    missing, extra, expected = judge_ticks(await tick_counts(ch, TEST_DB), ids, start + 2, end - 2)
    per_probe = {r["probe"]: r["n"] for r in await ch.query(
        f"SELECT probe, count() AS n FROM {TEST_DB}.check_results GROUP BY probe")}
    print(f"\ntwo hosts: {per_probe}; missing {missing}, duplicated {extra} of {expected} ticks")
    assert extra == 0 and missing == 0
    assert min(per_probe.get("host-a", 0), per_probe.get("host-b", 0)) > 0.2 * sum(per_probe.values())
    assert leaders == [0, 1]  # exactly one scheduler while both ran


async def test_clickhouse_outage_leaves_no_hole(db, engine, private_service):
    svc = private_service("clickhouse")
    ch = ClickHouse(_ch_settings(svc.port))
    await migrate_clickhouse(ch, "default")
    runner, port = await start_target()
    ids = await seed_tcp(db, port, 100, intervals=(1,))
    proc = engine(**FAST, **svc.engine_env)
    try:
        await proc.wait_for_log("queue ready")
        start = time.time()
        await asyncio.sleep(3)
        await asyncio.to_thread(svc.stop)  # the target server in this loop keeps serving
        down = time.time()
        await asyncio.sleep(15)
        await asyncio.to_thread(svc.start)
        up = time.time()
        caught_up = await wait_until(lambda: _spool_empty_and_logged(proc), 30)
        recovered = time.time() - up
        await asyncio.sleep(2)
        end = time.time()
    finally:
        assert await proc.stop() == 0
        await runner.cleanup()
    assert caught_up
    assert "results are being kept until ClickHouse accepts them" in proc.output()
    assert proc.output().count("results are being kept until ClickHouse") == 1  # logged once
    missing, extra, expected = judge_ticks(await tick_counts(ch, "default"), ids, start + 1, end - 1)
    await ch.close()
    print(f"\nClickHouse down {up - down:.0f} s: backlog written {recovered:.1f} s after it returned; "
          f"lost {missing} of {expected} ticks, duplicated {extra}")
    assert (missing, extra) == (0, 0)


def _ch_settings(port: int):
    from engine.settings import ClickHouseSettings
    return ClickHouseSettings(url=f"http://127.0.0.1:{port}", database="default")


async def _spool_empty_and_logged(proc) -> bool:
    return "ClickHouse accepts results again" in proc.output()


async def test_postgres_outage_statuses_written_after(engine, private_service, tmp_path):
    svc = private_service("postgres")
    dsn = svc.engine_env["POSTGRES_DSN"]
    await migrate_postgres(dsn)
    conn = await asyncpg.connect(dsn)
    runner, port = await start_target()
    try:
        ids = await seed_tcp(conn, port, 50, intervals=(1,))
        await conn.close()
        proc = engine(**FAST, **svc.engine_env)
        await proc.wait_for_log("queue ready")
        await asyncio.sleep(3)
        await asyncio.to_thread(svc.stop)  # the target server in this loop keeps serving
        down = time.time()
        await asyncio.sleep(10)
        await asyncio.to_thread(svc.start)
        up = time.time()
        conn = await asyncpg.connect(dsn)

        async def fresh() -> bool:
            n = await conn.fetchval("SELECT count(*) FROM monitor_status WHERE last_checked_at > $1",
                                    datetime.fromtimestamp(up, timezone.utc))
            return n == len(ids)

        ok = await wait_until(fresh, 20)
        recovered = time.time() - up
        assert await proc.stop() == 0
    finally:
        await runner.cleanup()
    out = proc.output()
    print(f"\nPostgreSQL down {up - down:.0f} s: every status fresh {recovered:.1f} s after it returned")
    assert ok
    assert out.count("statuses are being kept until PostgreSQL accepts them") == 1
    await conn.close()


async def test_queue_store_restarted_empty_is_rebuilt(db, engine, ch, private_service):
    svc = private_service("redis")
    runner, port = await start_target()
    ids = await seed_tcp(db, port, 50, intervals=(1,))
    proc = engine(**FAST, **svc.engine_env)
    try:
        await proc.wait_for_log("queue ready")
        await asyncio.sleep(3)
        await asyncio.to_thread(svc.stop)  # the target server in this loop keeps serving
        await asyncio.sleep(2)
        await asyncio.to_thread(svc.start)
        up = time.time()

        async def all_checked() -> bool:
            rows = await ch.query(f"SELECT uniqExact(monitor_id) AS n FROM {TEST_DB}.check_results "
                                  f"WHERE ts > {int(up) + 1}")
            return rows[0]["n"] == len(ids)

        ok = await wait_until(all_checked, 20)
        recovered = time.time() - up
    finally:
        assert await proc.stop() == 0
        await runner.cleanup()
    print(f"\nqueue store restarted empty: all monitors checked again {recovered:.1f} s later")
    assert ok
    assert "rebuilding from PostgreSQL" in proc.output()


async def test_sigterm_under_load_drains_and_loses_nothing(db, engine, ch, redis):
    runner, port = await start_target(slow_s=1.5)
    ids = {}
    from engine.admin import insert_monitors, normalize
    rows = [normalize({"url": f"http://127.0.0.1:{port}/slow", "interval_seconds": 2, "timeout_ms": 4000,
                       "retries": 0}) for _ in range(200)]
    ids = await insert_monitors(db, rows)
    proc = engine(**FAST, UE_ENGINE_GRACE_MS="5000")
    try:
        await proc.wait_for_log("queue ready")
        await asyncio.sleep(4)
        sent = time.monotonic()
        code = await proc.stop(signal.SIGTERM, timeout=20)
        took = time.monotonic() - sent
    finally:
        await runner.cleanup()
    assert code == 0 and took < 5 + 3
    from engine.keys import Keys
    keys = Keys("ue", 16)
    leased = sum([await redis.zcard(pk.active) for pk in keys.partitions])
    history = 0
    for mid in ids:
        entries = await redis.lrange(keys.partition_of(mid).history(mid), 0, -1)
        history += sum(1 for e in entries if job_history.decode(e)["event"] == "checked")
    rows = (await ch.query(f"SELECT count() AS n FROM {TEST_DB}.check_results"))[0]["n"]
    print(f"\nSIGTERM under load: exit 0 in {took:.1f} s; {rows} results written, "
          f"{history} checks acknowledged, {history - rows} lost; {leased} jobs left leased")
    assert leased == 0 and rows == history and rows > 200


async def test_sighup_replaces_workers_without_missing_a_tick(db, engine, ch):
    runner, port = await start_target()
    ids = await seed_tcp(db, port, 200, intervals=(1, 2, 3))
    proc = engine("run", "--workers", "2", **FAST)
    try:
        await proc.wait_for_log("worker 1 is ready")
        start = time.time()
        await asyncio.sleep(4)
        proc.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: asyncio.sleep(0, len(ready_pids(proc.output())) >= 4), 20)
        await asyncio.sleep(6)
        end = time.time()
    finally:
        assert await proc.stop() == 0
        await runner.cleanup()
    assert "reloading: replacing workers one by one" in proc.output()
    assert len(set(ready_pids(proc.output()))) == 4
    missing, extra, expected = judge_ticks(await tick_counts(ch, TEST_DB), ids, start + 1, end - 1)
    print(f"\nSIGHUP: missing {missing}, duplicated {extra} of {expected} ticks")
    assert (missing, extra) == (0, 0)


async def test_worker_that_cannot_boot_stops_the_supervisor(db, engine, redis):
    first = engine(**FAST)
    await first.wait_for_log("queue ready")
    assert await first.stop() == 0
    proc = engine(**FAST, UE_QUEUE_PARTITIONS="8")  # the queue was built with 16
    deadline = time.monotonic() + 20
    while proc.proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert proc.proc.returncode == 3
    last = proc.output().strip().splitlines()[-1]
    assert last.startswith("uptime-engine: worker 0 cannot start: invalid setting queue.partitions")
    assert proc.output().count("cannot start") == 3  # worker log, supervisor log, final line: no respawn loop


async def test_hung_worker_is_killed_and_replaced(db, engine):
    runner, port = await start_target()
    await seed_tcp(db, port, 20, intervals=(1,))
    proc = engine("run", "--workers", "1", **FAST, UE_ENGINE_HEARTBEAT_TIMEOUT_MS="2000")
    try:
        await proc.wait_for_log("worker 0 is ready")
        await asyncio.sleep(2.5)
        (pid,) = ready_pids(proc.output())
        os.kill(pid, signal.SIGSTOP)  # its event loop stops answering
        stopped = time.time()
        assert await wait_until(lambda: asyncio.sleep(0, len(ready_pids(proc.output())) == 2), 15)
        replaced = log_time(proc.output(), "is ready", after=stopped) - stopped
    finally:
        assert await proc.stop() == 0
        await runner.cleanup()
    assert re.search(r"worker 0 \(pid \d+\) silent for \d+ s: killing it", proc.output())
    print(f"\nhung worker replaced {replaced:.1f} s after it stopped answering (timeout 2 s)")


async def test_scheduler_fails_over(db, engine):
    runner, port = await start_target()
    await seed_tcp(db, port, 10, intervals=(1,))
    env = {**FAST, "UE_SCHEDULER_LOCK_TTL_MS": "2000"}
    a = engine("run", "--workers", "1", "--probe-id", "host-a", **env)
    await a.wait_for_log("this process is the scheduler")
    b = engine("run", "--workers", "1", "--probe-id", "host-b", **env)
    try:
        await b.wait_for_log("worker 0 is ready")
        await asyncio.sleep(1)
        (pid,) = ready_pids(a.output())
        killed = time.time()
        os.kill(a.proc.pid, signal.SIGKILL)  # the whole host dies: supervisor first, then its worker
        os.kill(pid, signal.SIGKILL)
        await b.wait_for_log("this process is the scheduler", timeout=15)
        took = log_time(b.output(), "this process is the scheduler") - killed
        mid = (await seed_tcp(db, port, 1, intervals=(1,)))
        await b.wait_for_log(f"Scheduled monitor {next(iter(mid))} to run every 1 seconds", timeout=10)
    finally:
        assert await b.stop() == 0
        await runner.cleanup()
    print(f"\nscheduler failover: host-b took over {took:.1f} s after host-a died (lease 2 s)")
    assert took < 6
