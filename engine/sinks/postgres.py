"""PostgreSQL status coalescer: one statement per flush, newest outcome per monitor.

Only final outcomes reach it (an 'up', or a 'down' after the last retry). The statement upserts every
monitor's row, keeps `consecutive_failures` and `status_changed_at` right, and sends
`pg_notify('monitor_status', json)` for each row whose status changed. While PostgreSQL is down the
updates stay coalesced in memory (one entry per monitor, so memory is bounded by the monitor count).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import asyncpg

from engine import metrics
from engine.settings import SinkSettings

log = logging.getLogger("engine.sinks.postgres")

UPSERT = """
WITH u AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::real[], $5::int[],
                         $6::text[], $7::bool[], $8::int[])
        AS u(monitor_id, status, checked_at, latency_ms, status_code, error, reset, failures)
), old AS (
    SELECT s.monitor_id, s.status, s.consecutive_failures
    FROM monitor_status s JOIN u USING (monitor_id)
    ORDER BY s.monitor_id FOR UPDATE OF s
), up AS (
    INSERT INTO monitor_status AS s (monitor_id, status, last_checked_at, last_latency_ms,
        last_status_code, last_error, consecutive_failures, status_changed_at)
    SELECT u.monitor_id, u.status, u.checked_at, u.latency_ms, u.status_code, u.error,
           CASE WHEN u.reset THEN u.failures ELSE coalesce(old.consecutive_failures, 0) + u.failures END,
           u.checked_at
    FROM u JOIN monitors m ON m.id = u.monitor_id LEFT JOIN old USING (monitor_id)
    ORDER BY u.monitor_id
    ON CONFLICT (monitor_id) DO UPDATE SET
        status = EXCLUDED.status,
        last_checked_at = EXCLUDED.last_checked_at,
        last_latency_ms = EXCLUDED.last_latency_ms,
        last_status_code = EXCLUDED.last_status_code,
        last_error = EXCLUDED.last_error,
        consecutive_failures = EXCLUDED.consecutive_failures,
        status_changed_at = CASE WHEN s.status IS DISTINCT FROM EXCLUDED.status
                                 THEN EXCLUDED.status_changed_at ELSE s.status_changed_at END
    WHERE s.last_checked_at IS NULL OR s.last_checked_at <= EXCLUDED.last_checked_at
    RETURNING s.monitor_id, s.status, s.status_changed_at, s.last_error
)
SELECT count(*) AS written,
       count(pg_notify('monitor_status', json_build_object(
           'monitor_id', up.monitor_id, 'old', old.status, 'new', up.status,
           'at', up.status_changed_at, 'error', up.last_error)::text))
           FILTER (WHERE old.status IS DISTINCT FROM up.status) AS changed
FROM up LEFT JOIN old USING (monitor_id)
"""


@dataclass(slots=True)
class StatusUpdate:
    status: str            # 'up' | 'down'
    checked_at: datetime
    latency_ms: float
    status_code: int | None
    error: str | None
    reset: bool            # a success happened since the last flush: failures count from zero
    failures: int          # final failures since then


class StatusSink:
    def __init__(self, dsn: str, settings: SinkSettings) -> None:
        self.dsn = dsn
        self.settings = settings
        self.pending: dict[int, StatusUpdate] = {}
        self._conn: asyncpg.Connection | None = None
        self.healthy = True
        self.flushes = 0
        self.errors = 0
        self.notified = 0

    def record(self, monitor_id: int, ok: bool, started: float, latency_ms: float,
               status_code: int, error: str) -> None:
        """Record a final outcome; coalesces with what is pending for this monitor."""
        prev = self.pending.get(monitor_id)
        if ok:
            reset, failures = True, 0
        elif prev is None:
            reset, failures = False, 1
        else:
            reset, failures = prev.reset, prev.failures + 1
        self.pending[monitor_id] = StatusUpdate(
            "up" if ok else "down", datetime.fromtimestamp(started, timezone.utc), latency_ms,
            status_code or None, error or None, reset, failures)

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.dsn, timeout=5, command_timeout=30)
        return self._conn

    async def flush(self) -> bool:
        if not self.pending:
            return True
        batch, self.pending = self.pending, {}
        ids = sorted(batch)
        rows = [batch[i] for i in ids]
        try:
            conn = await self._connection()
            rec = await conn.fetchrow(
                UPSERT, ids, [r.status for r in rows], [r.checked_at for r in rows],
                [r.latency_ms for r in rows], [r.status_code for r in rows], [r.error for r in rows],
                [r.reset for r in rows], [r.failures for r in rows])
        except asyncio.CancelledError:
            self._merge_back(batch)
            raise
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.errors += 1
            metrics.flush_error("postgres")
            self._merge_back(batch)
            if self._conn is not None and not self._conn.is_closed():
                self._conn.terminate()
            self._conn = None
            if self.healthy:
                log.warning("statuses are being kept until PostgreSQL accepts them: %s",
                            str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
                self.healthy = False
            return False
        self.flushes += 1
        self.notified += rec["changed"]
        metrics.batch_written("postgres", len(ids))
        if not self.healthy:
            log.warning("PostgreSQL accepts statuses again")
            self.healthy = True
        return True

    def _merge_back(self, older: dict[int, StatusUpdate]) -> None:
        """A failed flush: put its updates back under anything newer that arrived meanwhile."""
        for mid, old in older.items():
            new = self.pending.get(mid)
            if new is None:
                self.pending[mid] = old
            elif not new.reset:
                new.reset, new.failures = old.reset, old.failures + new.failures

    async def run(self, stopping: asyncio.Event) -> None:
        delay = self.settings.flush_ms / 1000
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), delay)
            except asyncio.TimeoutError:
                pass
            ok = await self.flush()
            delay = self.settings.flush_ms / 1000 if ok else min(delay * 2, 3.0)  # recovery waits at most this

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
