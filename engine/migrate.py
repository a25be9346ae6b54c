"""`uptime-engine migrate`: create or update the PostgreSQL and ClickHouse schemas, idempotently.

ClickHouse DDL adapts to the server: LowCardinality, DateTime64 and TTL are used only where the
server's version has them (Debian ships 18.16, which has none of them).
"""
from __future__ import annotations

import logging
from pathlib import Path

import asyncpg

from engine.settings import Settings
from engine.sinks.clickhouse import ClickHouse

log = logging.getLogger("engine.migrate")
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "config" / "schema"


def clickhouse_ddl(database: str, version: tuple[int, ...], ttl_days: int = 0) -> str:
    lowcard = "LowCardinality(String)" if version >= (19, 9) else "String"
    dt = "DateTime64(3, 'UTC')" if version >= (20, 1) else "DateTime"
    ttl = f"\nTTL toDateTime(ts) + INTERVAL {ttl_days} DAY" if ttl_days and version >= (19, 6) else ""
    return f"""CREATE TABLE IF NOT EXISTS {database}.check_results (
    ts               {dt},
    monitor_id       UInt64,
    probe            {lowcard},
    attempt          UInt8,
    ok               UInt8,
    status_code      UInt16,
    latency_ms       Float32,
    dns_ms           Nullable(Float32),
    connect_ms       Nullable(Float32),
    tls_ms           Nullable(Float32),
    ttfb_ms          Nullable(Float32),
    error_kind       {lowcard},
    error            String,
    scheduled_at     {dt},
    lateness_ms      Float32,
    cert_expiry_days Nullable(Float32),
    worker           {lowcard}
) ENGINE = MergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (monitor_id, ts){ttl}"""


async def migrate_postgres(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        async with conn.transaction():
            # One migrator at a time (several probe hosts may start together).
            await conn.execute("SELECT pg_advisory_xact_lock(775533)")
            await conn.execute((SCHEMA_DIR / "postgres.sql").read_text())
    finally:
        await conn.close()


async def migrate_clickhouse(ch: ClickHouse, database: str) -> None:
    version = await ch.version()
    if database != "default":
        await ch.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    await ch.execute(clickhouse_ddl(database, version))


async def migrate(settings: Settings) -> None:
    await migrate_postgres(settings.postgres.dsn)
    ch = ClickHouse(settings.clickhouse)
    try:
        await migrate_clickhouse(ch, settings.clickhouse.database)
    finally:
        await ch.close()
    log.info("schemas are up to date (PostgreSQL and ClickHouse)")
