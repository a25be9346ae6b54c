"""/metrics on a real engine: counters move, match the rows in ClickHouse, survive a killed worker."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from engine.admin import insert_monitors, normalize
from tests.conftest import ROOT, TEST_DB, ch_rows
from tests.targets import free_port, start_target

FAST = {"UE_QUEUE_BACKOFF_MS": "200", "UE_SINKS_FLUSH_MS": "200", "UE_SCHEDULER_SYNC_MS": "300"}


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from the endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def total(samples: dict, name: str, **match: str) -> float:
    return sum(v for (n, labels), v in samples.items()
               if n == name and all(dict(labels).get(k) == w for k, w in match.items()))


def worker_pids(supervisor: int) -> list[int]:
    with open(f"/proc/{supervisor}/task/{supervisor}/children") as f:
        return [int(p) for p in f.read().split()]


async def ch_count(ch) -> int:
    return (await ch_rows(ch, f"SELECT count() AS n FROM {TEST_DB}.check_results"))[0]["n"]


async def settle(port: int, ch, timeout: float = 15) -> tuple[dict, int]:
    """Wait until nothing moves any more: the metrics total equals the ClickHouse row count."""
    deadline = time.monotonic() + timeout
    while True:
        samples = await asyncio.to_thread(scrape, port)
        rows = await ch_count(ch)
        if total(samples, "uptime_checks_total") == rows and rows > 0 and \
                total(samples, "uptime_probes_in_flight") == 0:
            await asyncio.sleep(1.5)  # still equal a fold interval later: really settled
            again = await asyncio.to_thread(scrape, port)
            if total(again, "uptime_checks_total") == await ch_count(ch) == rows:
                return again, rows
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics {total(samples, 'uptime_checks_total')} != ClickHouse {rows}")
        await asyncio.sleep(0.5)


async def test_metrics_match_clickhouse_and_survive_a_killed_worker(db, engine, ch):
    runner, port = await start_target()
    rows = [normalize({"type": "tcp", "host": "127.0.0.1", "port": port, "interval_seconds": 1,
                       "retries": 0}) for _ in range(20)]
    rows += [normalize({"url": f"http://127.0.0.1:{port}/503", "interval_seconds": 1, "retries": 1})
             for _ in range(5)]
    await insert_monitors(db, rows)
    mport = free_port()
    # The killed worker may be the scheduler: a short lock lets the other take over quickly.
    proc = engine("run", "--workers", "2", "--metrics-port", str(mport), **FAST,
                  UE_SCHEDULER_LOCK_TTL_MS="1500")
    try:
        await proc.wait_for_log("queue ready")
        await asyncio.sleep(2.5)
        first = await asyncio.to_thread(scrape, mport)
        await asyncio.sleep(1.5)
        second = await asyncio.to_thread(scrape, mport)
        assert total(second, "uptime_checks_total") > total(first, "uptime_checks_total") > 0
        assert total(second, "uptime_queue_up") == 1
        assert len([k for k in second if k[0] == "uptime_queue_depth"]) == 16  # one per partition
        queued = total(second, "uptime_queue_depth") + total(second, "uptime_queue_in_flight")
        assert 20 <= queued <= 30  # 25 monitors (read in one pipeline, not one atomic snapshot)

        # Quiesce, then every attempt is one ClickHouse row and one count.
        await db.execute("UPDATE monitors SET enabled = false")
        settled, n_rows = await settle(mport, ch)
        by_outcome = await ch_rows(ch, f"SELECT ok, attempt, count() AS n FROM {TEST_DB}.check_results "
                                       f"GROUP BY ok, attempt")
        ups = sum(r["n"] for r in by_outcome if r["ok"])
        assert total(settled, "uptime_checks_total", outcome="up") == ups
        assert total(settled, "uptime_checks_total", type="http", outcome="retry") == \
            sum(r["n"] for r in by_outcome if not r["ok"] and r["attempt"] == 1)
        assert total(settled, "uptime_check_duration_seconds_count") == n_rows
        assert total(settled, "uptime_schedule_lateness_seconds_count") == n_rows
        assert total(settled, "uptime_sink_batch_size_sum", sink="clickhouse") == n_rows
        assert total(settled, "uptime_sink_batch_size_count", sink="claim") > 0

        # A killed worker: its counts stay in the total, the restart is counted.
        victim = worker_pids(proc.proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while True:
            after_kill = await asyncio.to_thread(scrape, mport)
            pids = worker_pids(proc.proc.pid)
            if total(after_kill, "uptime_worker_restarts_total") == 1 and len(pids) == 2 and victim not in pids:
                break
            assert time.monotonic() < deadline, "the killed worker was not replaced"
            await asyncio.sleep(0.3)
        assert total(after_kill, "uptime_checks_total") == n_rows

        # Keep checking: the counters keep adding up across the old and the new worker.
        await db.execute("UPDATE monitors SET enabled = true")
        deadline = time.monotonic() + 20
        while await ch_count(ch) < n_rows + 50:
            assert time.monotonic() < deadline, "checks did not resume after the restart"
            await asyncio.sleep(0.5)
        await db.execute("UPDATE monitors SET enabled = false")
        final, final_rows = await settle(mport, ch)
        assert final_rows > n_rows
        assert total(final, "uptime_checks_total") == final_rows
    finally:
        assert await proc.stop() == 0
        await runner.cleanup()


def test_fold_puts_hot_path_counts_into_the_histograms(tmp_path):
    """check_done only bumps local ints; fold() must land them in the right buckets. Runs in a
    child interpreter: multiprocess mode changes prometheus_client's global state."""
    port = free_port()
    script = textwrap.dedent(f"""
        import urllib.request
        from engine import metrics, settings
        metrics.supervisor_started(settings.load(environ={{"UE_ENGINE_METRICS_PORT": "{port}",
                                                         "DRAGONFLY_PORT": "1"}}))
        for d in (0.0005, 0.001, 0.003, 7.0, 100.0):
            metrics.check_done("http", "up", d, -0.5)
        metrics.check_done("tcp", "down", 0.02, 42.0)
        metrics.check_done("ftp", "up", 1, 1)   # unknown kind: ignored, no error
        metrics.in_flight(3)
        metrics.fold()
        print(urllib.request.urlopen("http://127.0.0.1:{port}/metrics").read().decode())
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                         timeout=30, env={k: v for k, v in os.environ.items()
                                          if k != "PROMETHEUS_MULTIPROC_DIR"})
    assert out.returncode == 0, out.stderr
    s = {}
    for family in text_string_to_metric_families(out.stdout):
        for sample in family.samples:
            s[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    b = "uptime_check_duration_seconds_bucket"
    assert s[b, (("le", "0.001"), ("type", "http"))] == 2        # 0.0005 and 0.001 (le is inclusive)
    assert s[b, (("le", "0.005"), ("type", "http"))] == 3
    assert s[b, (("le", "10.0"), ("type", "http"))] == 4
    assert s[b, (("le", "+Inf"), ("type", "http"))] == 5
    assert abs(s["uptime_check_duration_seconds_sum", (("type", "http"),)] - 107.0045) < 1e-9
    assert s["uptime_checks_total", (("outcome", "up"), ("type", "http"))] == 5
    assert s["uptime_checks_total", (("outcome", "down"), ("type", "tcp"))] == 1
    assert s["uptime_schedule_lateness_seconds_bucket", (("le", "0.005"),)] == 5  # negative lateness
    assert s["uptime_schedule_lateness_seconds_bucket", (("le", "60.0"),)] == 6
    assert s["uptime_probes_in_flight", ()] == 3
    assert s["uptime_queue_up", ()] == 0  # Dragonfly on port 1 does not answer: the scrape still does
