"""The bench's own use of the services: its databases, seeding, and the figures read back.

The bench never shares state with tests or other runs: Redis db `BENCH_REDIS_DB`, PostgreSQL
database `ue_bench`, ClickHouse database `ue_bench`, and every scenario tags its rows with its own
probe id (`ENGINE_PROBE_ID`), so a scenario's ClickHouse figures are its own rows only.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
BENCH_DB = "ue_bench"
BENCH_REDIS_DB = 14
PREFIX = "ue"            # the engine's default queue prefix (own Redis db, so no clash)
PARTITIONS = 16          # the engine's default queue.partitions


def services_env() -> dict[str, str]:
    """The local services' addresses (scripts/services.sh env), starting them if needed."""
    script = ROOT / "scripts" / "services.sh"
    status = subprocess.run(["bash", str(script), "status"], capture_output=True, text=True).stdout
    if "down" in status:
        subprocess.run(["bash", str(script), "start"], check=True)
    out = subprocess.run(["bash", str(script), "env"], check=True, capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.split())


class Stores:
    """Connections to Redis (bench db), PostgreSQL (ue_bench) and ClickHouse (ue_bench)."""

    def __init__(self, services: dict[str, str]) -> None:
        self.services = services
        self.admin_dsn = services["POSTGRES_DSN"]
        self.dsn = self.admin_dsn.rsplit("/", 1)[0] + f"/{BENCH_DB}"
        self.ch_url = services["CLICKHOUSE_URL"]
        self.redis = aioredis.Redis(host=services["DRAGONFLY_HOST"], port=int(services["DRAGONFLY_PORT"]),
                                    db=BENCH_REDIS_DB)
        self.pg: asyncpg.Connection | None = None
        self.pg_admin: asyncpg.Connection | None = None
        self.own_xacts = 0
        self.http: aiohttp.ClientSession | None = None

    def engine_env(self, probe: str, spool: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UE_", "ENGINE_", "DRAGONFLY_",
                                                                         "POSTGRES_", "CLICKHOUSE_"))}
        env.update({
            "DRAGONFLY_HOST": self.services["DRAGONFLY_HOST"],
            "DRAGONFLY_PORT": self.services["DRAGONFLY_PORT"],
            "UE_DRAGONFLY_DB": str(BENCH_REDIS_DB),
            "POSTGRES_DSN": self.dsn,
            "CLICKHOUSE_URL": self.ch_url,
            "CLICKHOUSE_DATABASE": BENCH_DB,
            "ENGINE_PROBE_ID": probe,
            "UE_ENGINE_METRICS_PORT": "0",
            "UE_SINKS_SPOOL_DIR": str(spool),
        })
        env.update(extra or {})
        return env

    async def open(self) -> None:
        admin = await asyncpg.connect(self.admin_dsn)
        try:
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", BENCH_DB):
                await admin.execute(f"CREATE DATABASE {BENCH_DB}")
        finally:
            await admin.close()
        self.http = aiohttp.ClientSession()
        await self.ch(f"CREATE DATABASE IF NOT EXISTS {BENCH_DB}")
        await self.ch(f"DROP TABLE IF EXISTS {BENCH_DB}.check_results")
        await self.redis.ping()

    def migrate(self) -> None:
        """`uptime-engine migrate` with the bench's environment (the contract's own DDL)."""
        env = self.engine_env("bench", OUT / "spool")
        r = subprocess.run([sys.executable, "-m", "engine", "migrate"], env=env, cwd=ROOT,
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"uptime-engine migrate failed: {r.stderr.strip() or r.stdout.strip()}")

    async def instrument(self) -> None:
        """Count the statements that write monitor_status (a statement-level trigger bumping a
        sequence; pg_stat_statements needs a server restart, and this is the bench's own db)."""
        pg = await self.connect_pg()
        # An INSERT … ON CONFLICT DO UPDATE fires both statement triggers: count each kind apart
        # and take the larger as the number of statements.
        await pg.execute("""
            CREATE SEQUENCE IF NOT EXISTS bench_status_ins;
            CREATE SEQUENCE IF NOT EXISTS bench_status_upd;
            CREATE OR REPLACE FUNCTION bench_count_status_stmt() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'INSERT' THEN PERFORM nextval('bench_status_ins');
                ELSE PERFORM nextval('bench_status_upd'); END IF;
                RETURN NULL;
            END $$;
            DROP TRIGGER IF EXISTS bench_status_stmts ON monitor_status;
            CREATE TRIGGER bench_status_stmts AFTER INSERT OR UPDATE ON monitor_status
                FOR EACH STATEMENT EXECUTE FUNCTION bench_count_status_stmt();""")

    async def connect_pg(self) -> asyncpg.Connection:
        if self.pg is None or self.pg.is_closed():
            self.pg = await asyncpg.connect(self.dsn)
        return self.pg

    async def close(self) -> None:
        for conn in (self.pg, self.pg_admin):
            if conn is not None:
                await conn.close()
        if self.http is not None:
            await self.http.close()
        await self.redis.aclose()

    # -- reset and seed ------------------------------------------------------------------------
    async def reset(self) -> None:
        """Empty the bench's monitors, statuses and queue (ClickHouse rows stay, tagged per run)."""
        pg = await self.connect_pg()
        await pg.execute("TRUNCATE monitors, monitor_status, monitor_deletions RESTART IDENTITY")
        await self.redis.flushdb()

    async def seed(self, rows: list[tuple]) -> float:
        """Bulk-load monitors with COPY: rows of (id, type, url, host, port, interval_seconds,
        timeout_ms, retries, enabled, verify_tls). Row triggers are skipped (session_replication_role) and
        the 'pending' status rows they would add are made in one INSERT … SELECT. Seconds taken."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        pg = await self.connect_pg()
        async with pg.transaction():
            await pg.execute("SET LOCAL session_replication_role = replica")
            await pg.copy_records_to_table(
                "monitors", records=rows,
                columns=["id", "type", "url", "host", "port", "interval_seconds", "timeout_ms",
                         "retries", "enabled", "verify_tls"])
            await pg.execute("INSERT INTO monitor_status (monitor_id, status) "
                             "SELECT id, 'pending' FROM monitors ON CONFLICT DO NOTHING")
        await pg.execute("ANALYZE monitors")
        return loop.time() - t0

    async def enable_up_to(self, last_id: int) -> int:
        pg = await self.connect_pg()
        res = await pg.execute("UPDATE monitors SET enabled = true WHERE id <= $1 AND NOT enabled", last_id)
        return int(res.split()[-1])

    # -- ClickHouse ----------------------------------------------------------------------------
    async def ch(self, sql: str, params: dict | None = None) -> str:
        assert self.http is not None
        async with self.http.post(self.ch_url, params=params or {}, data=sql.encode()) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"ClickHouse: {text.strip().splitlines()[0][:300]}")
            return text

    async def ch_rows(self, sql: str) -> list[dict]:
        text = await self.ch(sql + " FORMAT JSONEachRow", {"output_format_json_quote_64bit_integers": "0"})
        return [orjson.loads(line) for line in text.splitlines() if line.strip()]

    async def ch_counters(self) -> tuple[int, int]:
        """(rows in check_results, INSERTs so far). Every INSERT into a plain MergeTree takes the
        next block number, and merged parts keep the range they cover, so the highest block number
        counts inserts even on 18.16, which has no query_log here."""
        rows = await self.ch_rows(f"SELECT count() AS n FROM {BENCH_DB}.check_results")
        parts = await self.ch_rows(
            f"SELECT max(max_block_number) AS b FROM system.parts WHERE database = '{BENCH_DB}' "
            f"AND table = 'check_results'")
        return int(rows[0]["n"]), int(parts[0]["b"] or 0) if parts else 0

    async def window(self, probe: str, t0: int, t1: int) -> dict:
        """Figures of a probe's rows whose attempt started in [t0, t1) (whole seconds)."""
        where = f"probe = '{probe}' AND ts >= toDateTime({t0}) AND ts < toDateTime({t1})"
        r = (await self.ch_rows(
            f"SELECT count() AS n, countIf(attempt = 1) AS n1, countIf(ok = 0) AS failed, "
            f"quantilesExactIf(0.5, 0.9, 0.99)(lateness_ms, attempt = 1) AS q, "
            f"maxIf(lateness_ms, attempt = 1) AS max, avg(latency_ms) AS latency_avg, "
            f"quantileExact(0.99)(latency_ms) AS latency_p99 "
            f"FROM {BENCH_DB}.check_results WHERE {where}"))[0]
        kinds = await self.ch_rows(f"SELECT error_kind AS k, count() AS n FROM {BENCH_DB}.check_results "
                                   f"WHERE {where} AND ok = 0 GROUP BY k ORDER BY n DESC")
        attempts = await self.ch_rows(f"SELECT attempt AS a, count() AS n FROM {BENCH_DB}.check_results "
                                      f"WHERE {where} GROUP BY a ORDER BY a")
        q = r["q"] or [0, 0, 0]
        return {"rows": r["n"], "first_attempts": r["n1"], "failed": r["failed"],
                "lateness_p50_ms": q[0], "lateness_p90_ms": q[1], "lateness_p99_ms": q[2],
                "lateness_max_ms": r["max"] or 0.0, "latency_avg_ms": r["latency_avg"] or 0.0,
                "latency_p99_ms": r["latency_p99"] or 0.0,
                "errors": {k["k"]: k["n"] for k in kinds}, "attempts": {a["a"]: a["n"] for a in attempts}}

    async def ticks(self, probe: str, t0: int, t1: int, max_id: int | None = None) -> dict:
        """Distinct (monitor, tick) first attempts whose tick is in [t0, t1), and duplicates."""
        extra = f" AND monitor_id <= {max_id}" if max_id else ""
        r = (await self.ch_rows(
            f"SELECT count() AS n, uniqExact(monitor_id, scheduled_at) AS distinct_ticks "
            f"FROM {BENCH_DB}.check_results WHERE probe = '{probe}' AND attempt = 1 "
            f"AND scheduled_at >= toDateTime({t0}) AND scheduled_at < toDateTime({t1}){extra}"))[0]
        return {"ticks_done": r["distinct_ticks"], "duplicates": r["n"] - r["distinct_ticks"]}

    async def series(self, probe: str) -> list[dict]:
        """Per second: attempts, first attempts, failures and first-attempt lateness percentiles."""
        rows = await self.ch_rows(
            f"SELECT toUInt32(ts) AS t, count() AS n, countIf(attempt = 1) AS n1, countIf(ok = 0) AS f, "
            f"quantilesExactIf(0.5, 0.99)(lateness_ms, attempt = 1) AS q, maxIf(lateness_ms, attempt = 1) AS mx "
            f"FROM {BENCH_DB}.check_results WHERE probe = '{probe}' GROUP BY t ORDER BY t")
        return [{"t": r["t"], "n": r["n"], "n1": r["n1"], "failed": r["f"],
                 "p50": (r["q"] or [0, 0])[0], "p99": (r["q"] or [0, 0])[1], "max": r["mx"]} for r in rows]

    # -- PostgreSQL and Redis counters -----------------------------------------------------------
    async def pg_counters(self) -> dict:
        """Transactions in ue_bench (read from the admin database, so reading them adds none) and
        monitor_status row writes (read in ue_bench: one transaction per call, subtracted)."""
        if self.pg_admin is None or self.pg_admin.is_closed():
            self.pg_admin = await asyncpg.connect(self.admin_dsn)
        db = await self.pg_admin.fetchrow("SELECT xact_commit, xact_rollback, tup_inserted, tup_updated "
                               "FROM pg_stat_database WHERE datname = $1", BENCH_DB)
        pg = await self.connect_pg()
        st = await pg.fetchrow("SELECT n_tup_ins, n_tup_upd, "
                               "(SELECT last_value FROM bench_status_ins) AS si, "
                               "(SELECT last_value FROM bench_status_upd) AS su "
                               "FROM pg_stat_user_tables WHERE relname = 'monitor_status'")
        self.own_xacts += 1
        return {"xact": db["xact_commit"] + db["xact_rollback"] - self.own_xacts + 1, "status_ins": st["n_tup_ins"],
                "status_upd": st["n_tup_upd"], "status_si": st["si"], "status_su": st["su"]}

    async def queue_now(self) -> dict:
        """Leased (in flight) and due-now backlog over the queue's partitions, and the workers'
        own figures from their heartbeat hash."""
        sec, usec = await self.redis.time()
        now = sec * 1000 + usec // 1000
        pipe = self.redis.pipeline(transaction=False)
        for p in range(PARTITIONS):
            pipe.zcard(f"{{{PREFIX}:{p}}}:active")
            pipe.zcount(f"{{{PREFIX}:{p}}}:due", "-inf", now)
        pipe.hgetall(f"{PREFIX}:workers")
        r = await pipe.execute()
        workers = [orjson.loads(v) for v in r[-1].values()]
        return {"leased": sum(r[0:-1:2]), "backlog": sum(r[1:-1:2]),
                "checks": sum(w.get("checks", 0) for w in workers),
                "in_flight": sum(w.get("in_flight", 0) for w in workers),
                "p99": max([w.get("lateness_p99_ms", 0) for w in workers] or [0]),
                "workers": len(workers)}

    async def redis_stats(self) -> dict:
        mem = await self.redis.info("memory")
        cmd = await self.redis.info("commandstats")
        ev = cmd.get("cmdstat_evalsha", {})
        return {"used_memory": mem["used_memory"], "evalsha_calls": ev.get("calls", 0),
                "evalsha_usec": ev.get("usec", 0)}

    async def queue_memory(self, prefix: str = PREFIX) -> int:
        """Bytes held by the queue's per-partition keys (MEMORY USAGE, every element counted)."""
        total = 0
        for p in range(PARTITIONS):
            for name in ("due", "active", "run", "conf", "spec"):
                total += await self.redis.memory_usage(f"{{{prefix}:{p}}}:{name}", samples=0) or 0
        return total
