"""The results spool during a long ClickHouse outage: bounded by size and by the disk's free space,
dropping the oldest segments (logged) and sending the rest once ClickHouse answers."""
from __future__ import annotations

import logging
import time

import msgspec

from engine.settings import ClickHouseSettings, SinkSettings
from engine.sinks.clickhouse import ClickHouse, ResultRow, ResultsSink
from tests.conftest import TEST_DB
from tests.targets import free_port

ROWS = 1000  # per segment: about 0.25 MB


def row(batch: int, i: int) -> ResultRow:
    now = time.time()
    return ResultRow(now, batch, "spool-test", 1, 0, 0, 5000.0, None, None, None, None, "timeout",
                     "no answer within 5000 ms " + "x" * 60, now - 0.01, 10.0, None, f"w/{i}")


async def outage_sink(tmp_path, **limits) -> ResultsSink:
    down = ClickHouse(ClickHouseSettings(url=f"http://127.0.0.1:{free_port()}", database=TEST_DB))
    sink = ResultsSink(down, SinkSettings(spool_dir=str(tmp_path / "spool"), **limits), "t")
    await sink.start()
    return sink


def spool_bytes(sink: ResultsSink) -> int:
    return sum(p.stat().st_size for p in sink.spool_dir.glob("*.jsonl"))


async def test_spool_cap_drops_the_oldest_and_sends_the_rest(db, settings, tmp_path, caplog):
    sink = await outage_sink(tmp_path, spool_max_mb=1, spool_min_free_mb=0)
    caplog.set_level(logging.ERROR, "engine.sinks.clickhouse")
    for batch in range(10):  # ten segments of ~0.25 MB against a 1 MB cap
        for i in range(ROWS):
            sink.add(row(batch, i))
        assert not await sink.flush()
    kept = sink.pending()
    assert spool_bytes(sink) <= 1 << 20
    assert 2 * ROWS <= kept < 10 * ROWS and kept % ROWS == 0
    drops = [r.getMessage() for r in caplog.records if "dropped the oldest" in r.getMessage()]
    assert drops and sum(int(m.split("dropped the oldest ")[1].split()[0]) for m in drops) == 10 * ROWS - kept
    assert all("\n" not in m for m in drops)

    await sink.ch.close()
    sink.ch = ClickHouse(settings.clickhouse)  # ClickHouse is back
    assert await sink.flush() and sink.pending() == 0
    got = await sink.ch.query(f"SELECT monitor_id, count() AS n FROM {TEST_DB}.check_results "
                              f"WHERE probe = 'spool-test' GROUP BY monitor_id ORDER BY monitor_id")
    newest = list(range(10 - kept // ROWS, 10))
    assert [(g["monitor_id"], g["n"]) for g in got] == [(b, ROWS) for b in newest]  # the newest, whole
    await sink.ch.close()
    sink.close()


async def test_spool_gives_way_when_its_disk_runs_low(db, tmp_path, caplog):
    # Ask for more free space than any disk has: every sealed segment has to go.
    sink = await outage_sink(tmp_path, spool_max_mb=0, spool_min_free_mb=1 << 30)
    caplog.set_level(logging.ERROR, "engine.sinks.clickhouse")
    for batch in range(3):
        for i in range(ROWS):
            sink.add(row(batch, i))
        assert not await sink.flush()
    assert sink.pending() == 0 and not list(sink.spool_dir.glob("*.jsonl"))
    assert sum("dropped the oldest" in r.getMessage() for r in caplog.records) == 3
    await sink.ch.close()
    sink.close()


async def test_no_limits_keep_everything(db, tmp_path):
    sink = await outage_sink(tmp_path, spool_max_mb=0, spool_min_free_mb=0)
    for batch in range(3):
        for i in range(ROWS):
            sink.add(row(batch, i))
        assert not await sink.flush()
    assert sink.pending() == 3 * ROWS and sink.enforce_limits() == 0
    await sink.ch.close()
    sink.close()


def dead_pid() -> int:
    import subprocess
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


async def test_damaged_segments_do_not_hold_back_the_rest(db, settings, tmp_path, caplog):
    """A segment ClickHouse cannot parse is set aside whole (`.rejected`, one error line) and the
    segments after it are sent; a killed worker's open segment loses only its partial last row."""
    spool = tmp_path / "spool"
    spool.mkdir()
    rows = [row(1, i) for i in range(5)]
    for r in rows:  # as the sink writes them for ClickHouse 18.16 (DateTime: whole seconds)
        r.ts, r.scheduled_at = int(r.ts), int(r.scheduled_at)
    good = msgspec.json.Encoder().encode_lines(rows)
    (spool / f"{time.time_ns()}-1-2.jsonl").write_bytes(b"garbage\nmore garbage\n")
    (spool / f"t.{dead_pid()}.open").write_bytes(good + good[:40])  # died inside a write
    sink = ResultsSink(ClickHouse(settings.clickhouse), SinkSettings(spool_dir=str(spool)), "t")
    caplog.set_level(logging.ERROR, "engine.sinks.clickhouse")
    await sink.start()  # reclaims the dead worker's open segment
    for i in range(7):
        sink.add(row(2, i))
    assert await sink.flush() and sink.pending() == 0
    got = await sink.ch.query(f"SELECT monitor_id, count() AS n FROM {TEST_DB}.check_results "
                              f"WHERE probe = 'spool-test' GROUP BY monitor_id ORDER BY monitor_id")
    assert [(g["monitor_id"], g["n"]) for g in got] == [(1, 5), (2, 7)]
    (aside,) = spool.glob("*.rejected")
    assert aside.read_bytes() == b"garbage\nmore garbage\n"
    (line,) = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert "as malformed" in line and "Code: 27" in line and "\n" not in line
    await sink.ch.close()
    sink.close()
