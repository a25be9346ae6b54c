"""`migrate` is idempotent and the schema is the contract's."""
from __future__ import annotations

import subprocess
import sys

from engine.migrate import clickhouse_ddl
from tests.conftest import ROOT, TEST_DB


async def schema_snapshot(db, ch) -> tuple:
    cols = await db.fetch("SELECT table_name, column_name, data_type FROM information_schema.columns "
                          "WHERE table_schema = 'public' ORDER BY 1, 2")
    trig = await db.fetch("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1")
    ch_cols = await ch.query(f"SELECT name, type FROM system.columns WHERE database = '{TEST_DB}' "
                             f"AND table = 'check_results' ORDER BY name")
    return [tuple(r) for r in cols], [r[0] for r in trig], ch_cols


async def test_migrate_twice_changes_nothing(db, ch, engine_env):
    before = await schema_snapshot(db, ch)
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "engine", "migrate"], cwd=ROOT, env=engine_env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert await schema_snapshot(db, ch) == before
    names = {c[1] for c in before[0] if c[0] == "monitors"}
    assert {"id", "interval_seconds", "timeout_ms", "expected_status", "headers", "updated_at"} <= names
    assert {c["name"] for c in before[2]} >= {"ts", "monitor_id", "probe", "attempt", "ok", "status_code",
                                              "latency_ms", "dns_ms", "connect_ms", "tls_ms", "ttfb_ms",
                                              "error_kind", "error", "scheduled_at", "lateness_ms"}


async def test_triggers_keep_status_rows_and_updated_at(db):
    mid = await db.fetchval("INSERT INTO monitors (url, interval_seconds) VALUES ('http://x/', 5) RETURNING id")
    assert await db.fetchval("SELECT status FROM monitor_status WHERE monitor_id = $1", mid) == "pending"
    t0 = await db.fetchval("SELECT updated_at FROM monitors WHERE id = $1", mid)
    await db.execute("UPDATE monitors SET interval_seconds = 6 WHERE id = $1", mid)
    assert await db.fetchval("SELECT updated_at FROM monitors WHERE id = $1", mid) > t0
    await db.execute("DELETE FROM monitors WHERE id = $1", mid)
    assert await db.fetchval("SELECT count(*) FROM monitor_deletions WHERE monitor_id = $1", mid) == 1
    assert await db.fetchval("SELECT count(*) FROM monitor_status WHERE monitor_id = $1", mid) == 0


def test_clickhouse_ddl_uses_features_only_where_supported():
    old = clickhouse_ddl("d", (18, 16, 1), ttl_days=30)
    assert "LowCardinality" not in old and "DateTime64" not in old and "TTL" not in old
    new = clickhouse_ddl("d", (23, 8, 1), ttl_days=30)
    assert "LowCardinality(String)" in new and "DateTime64(3" in new and "TTL" in new
