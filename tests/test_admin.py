"""Operator commands against the real services: `status --json`, `history`, `monitors import`."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from engine.admin import insert_monitors, normalize
from tests.conftest import ROOT
from tests.targets import free_port, start_target

FAST = {"UE_QUEUE_BACKOFF_MS": "200", "UE_SINKS_FLUSH_MS": "200", "UE_SCHEDULER_SYNC_MS": "300"}


async def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=60, env={**os.environ, **env})


async def test_status_and_history_of_a_running_engine(db, engine, engine_env):
    runner, port = await start_target()
    ok, bad = await insert_monitors(db, [
        normalize({"url": f"http://127.0.0.1:{port}/ok", "interval_seconds": 1, "retries": 0}),
        normalize({"url": f"http://127.0.0.1:{port}/503", "interval_seconds": 1, "retries": 1})])
    await insert_monitors(db, [normalize({"type": "tcp", "host": "127.0.0.1", "port": port,
                                          "interval_seconds": 1, "retries": 0}) for _ in range(8)])
    proc = engine("run", "--workers", "2", **FAST)
    try:
        await proc.wait_for_log("queue ready")
        await asyncio.sleep(3.5)
        out = await cli(engine_env, "status", "--json")
        assert out.returncode == 0, out.stderr
        st = json.loads(out.stdout)
        table = await cli(engine_env, "status")
    finally:
        assert await proc.stop() == 0
        await runner.cleanup()

    assert st["queue"]["monitors"] == 10 and st["queue"]["partitions"] == 16
    assert st["scheduler"].startswith("test-probe/")
    t = st["total"]
    assert t["workers"] == 2 and t["probes"] == 1 and t["stale_workers"] == 0
    assert t["checks_1m"] >= 20 and t["checks_per_s"] > 0  # ~10 monitors at 1 s, for ~4 s
    assert t["sinks"] == {"clickhouse": True, "postgres": True, "dragonfly": True}
    assert 0 <= t["lateness_p50_ms"] <= t["lateness_p99_ms"] < 1000
    assert t["due_backlog"] >= 0 and t["in_flight"] >= 0
    host = st["probes"]["test-probe"]
    assert host["workers"] == 2 and host["checks_per_s"] == t["checks_per_s"]
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].startswith("queue: 10 monitors in 16 partitions")
    assert lines[2].split()[:3] == ["test-probe", "2", lines[2].split()[2]] and lines[3].startswith("total")

    out = await cli(engine_env, "history", str(bad), "--json")
    assert out.returncode == 0, out.stderr
    entries = [json.loads(line) for line in out.stdout.splitlines()]
    checked = [e for e in entries if e["event"] == "checked"]
    assert {e["outcome"] for e in checked} >= {"retry", "down"}
    assert {e["attempt"] for e in checked} == {1, 2}
    assert all(e["worker"].startswith("test-probe/") and e["kind"] == "http_status" for e in checked)
    assert all(e["tick"] % 1000 == entries[0]["tick"] % 1000 for e in checked)  # phase-stable ticks
    assert [e["tick"] for e in entries] == sorted((e["tick"] for e in entries), reverse=True)  # newest first

    out = await cli(engine_env, "history", str(ok))
    assert out.returncode == 0
    head, *rows = out.stdout.splitlines()
    assert head.split()[:4] == ["TICK", "(UTC)", "ATT", "EVENT"]
    assert len(rows) >= 2 and all(" checked " in r and " up " in r for r in rows)
    out = await cli(engine_env, "history", "999999")
    assert out.returncode == 0 and "no job history for monitor 999999" in out.stdout


async def test_status_without_dragonfly_is_one_line_without_secrets(engine_env):
    env = {**engine_env, "DRAGONFLY_PORT": str(free_port()), "DRAGONFLY_PASSWORD": "s3cr3t-pw"}
    out = await cli(env, "status", "--json")
    assert out.returncode == 3
    assert out.stdout == "" and len(out.stderr.strip().splitlines()) == 1
    assert "unreachable" in out.stderr and "s3cr3t-pw" not in out.stderr


GOOD_CSV = """name,type,url,host,port,interval_seconds,retries,expected_status,headers,enabled
home,http,https://example.com/,,,60,2,200-299,"{""X-Probe"": ""1""}",true
db,tcp,,db.internal,5432,30,0,,,yes
"multi
line name",http,http://example.org/health,,,10,,"200,301",,
"""

BAD_CSV = """name,url,interval_seconds,retries
ok,https://example.com/,60,3
zero,https://example.com/,0,3
scheme,ftp://example.com/,60,3
extra,https://example.com/,60,3,surplus
nonint,https://example.com/,soon,3
last,https://example.com/,60,3
"""

GOOD_JSONL = """{"url": "https://example.com/a", "interval_seconds": 60}
{"type": "tcp", "host": "10.0.0.1", "port": 22, "interval_seconds": 5, "retries": 0}

{"url": "https://example.com/b", "headers": {"Authorization": "Bearer x"}, "keyword": "ok", "verify_tls": false}
"""

BAD_JSONL = """{"url": "https://example.com/a", "interval_seconds": 60}
{"url": "https://example.com/b", "interval_seconds": 1.5}
not json
["a", "list"]
{"url": "https://example.com/c", "colour": "blue"}
{"type": "tcp", "host": "x", "port": 70000}
{"url": "https://example.com/d", "enabled": "maybe"}
{"url": "https://example.com/e", "name": 5}
{"url": "https://example.com/f"}
"""


async def _imported(db) -> list[dict]:
    return [dict(r) for r in await db.fetch("SELECT * FROM monitors ORDER BY id")]


async def test_import_good_csv_and_jsonl(db, engine_env, tmp_path):
    (tmp_path / "m.csv").write_text(GOOD_CSV)
    (tmp_path / "m.jsonl").write_text(GOOD_JSONL)
    out = await cli(engine_env, "monitors", "import", str(tmp_path / "m.csv"))
    assert (out.returncode, out.stdout.strip(), out.stderr) == (0, "imported 3 monitor(s)", "")
    out = await cli(engine_env, "monitors", "import", str(tmp_path / "m.jsonl"))
    assert (out.returncode, out.stdout.strip(), out.stderr) == (0, "imported 3 monitor(s)", "")
    rows = await _imported(db)
    assert [(r["type"], r["url"] or f"{r['host']}:{r['port']}") for r in rows] == [
        ("http", "https://example.com/"), ("tcp", "db.internal:5432"), ("http", "http://example.org/health"),
        ("http", "https://example.com/a"), ("tcp", "10.0.0.1:22"), ("http", "https://example.com/b")]
    home, dbm, multi, a, ssh, b = rows
    assert json.loads(home["headers"]) == {"X-Probe": "1"} and home["retries"] == 2 and home["enabled"]
    assert dbm["interval_seconds"] == 30 and dbm["retries"] == 0 and dbm["enabled"]
    assert multi["name"] == "multi\nline name" and multi["expected_status"] == "200,301"
    assert multi["retries"] == 3 and multi["timeout_ms"] == 10000  # defaults
    assert a["interval_seconds"] == 60 and ssh["retries"] == 0
    assert b["verify_tls"] is False and b["keyword"] == "ok"
    assert json.loads(b["headers"]) == {"Authorization": "Bearer x"}

    out = await cli(engine_env, "monitors", "list", "--json")
    listed = [json.loads(line) for line in out.stdout.splitlines()]
    assert [m["status"] for m in listed] == ["pending"] * 6


async def test_import_bad_rows_are_reported_by_line_and_nothing_is_imported(db, engine_env, tmp_path):
    (tmp_path / "bad.csv").write_text(BAD_CSV)
    path = str(tmp_path / "bad.csv")
    out = await cli(engine_env, "monitors", "import", path)
    assert out.returncode == 2 and out.stdout == ""
    err = out.stderr.splitlines()
    assert [line.split(": ", 1)[0] for line in err[:-1]] == [f"{path}:{n}" for n in (3, 4, 5, 6)]
    assert "interval_seconds must be 1..86400, got 0" in err[0]
    assert "url must be http(s)://" in err[1]
    assert "more values than header columns" in err[2]
    assert "interval_seconds: 'soon' is not a valid interval_seconds" in err[3]
    assert err[-1] == ("uptime-engine: 4 bad row(s); nothing imported (use --partial to import the 2 good ones)")
    assert await _imported(db) == []

    (tmp_path / "bad.jsonl").write_text(BAD_JSONL)
    path = str(tmp_path / "bad.jsonl")
    out = await cli(engine_env, "monitors", "import", path)
    assert out.returncode == 2
    err = out.stderr.splitlines()
    assert [line.split(": ", 1)[0] for line in err[:-1]] == [f"{path}:{n}" for n in (2, 3, 4, 5, 6, 7, 8)]
    assert "not JSON" in err[1] and "not a JSON object" in err[2] and "unknown field(s) colour" in err[3]
    assert "port must be 1..65535" in err[4] and "enabled: 'maybe'" in err[5] and "name: '5'" in err[6]
    assert await _imported(db) == []


async def test_import_partial_takes_the_good_rows(db, engine_env, tmp_path):
    (tmp_path / "bad.jsonl").write_text(BAD_JSONL)
    out = await cli(engine_env, "monitors", "import", "--partial", str(tmp_path / "bad.jsonl"))
    assert out.returncode == 2  # not everything went in: a script must notice
    assert out.stdout.strip() == "imported 2 monitor(s), skipped 7 bad row(s)"
    assert [r["url"] for r in await _imported(db)] == ["https://example.com/a", "https://example.com/f"]


async def test_monitors_add_and_disable(db, engine_env):
    out = await cli(engine_env, "monitors", "add", "127.0.0.1:5432", "--interval", "15")
    assert out.returncode == 0 and out.stdout.startswith("added monitor ")
    mid = out.stdout.split()[-1]
    out = await cli(engine_env, "monitors", "add", "not a target")
    assert out.returncode == 2 and "neither a URL nor HOST:PORT" in out.stderr
    out = await cli(engine_env, "monitors", "disable", mid, "424242")
    assert out.returncode == 2 and out.stdout.strip() == "disabled 1 monitor(s)"
    assert "no monitor with id 424242" in out.stderr
    rows = await _imported(db)
    assert [(r["type"], r["host"], r["port"], r["interval_seconds"], r["enabled"]) for r in rows] == [
        ("tcp", "127.0.0.1", 5432, 15, False)]
