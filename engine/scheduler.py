"""The scheduler: keeps Dragonfly's queue in step with the enabled monitors in PostgreSQL.

Exactly one runs at a time across every process and probe host: it holds a lease lock in Dragonfly
(renewed every sync; another takes over when it lapses). It does a full sync at start (and when it
takes over, when the store restarted empty, and every `full_sync_s`), then polls for monitors whose
`updated_at` moved and for deletions, every `sync_ms`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import asyncpg
import orjson
from redis.exceptions import RedisError

from engine.errors import InvalidMonitor
from engine.models import MonitorSpec
from engine.probes.status import parse_expected_status
from engine.queue import Queue
from engine.settings import Settings

log = logging.getLogger("engine.scheduler")

COLUMNS = """id, type, url, host, port, interval_seconds, timeout_ms, enabled, retries, method,
    headers, body, expected_status, keyword, invert_keyword, follow_redirects, verify_tls,
    tcp_send, tcp_expect, updated_at"""
OVERLAP = timedelta(seconds=10)  # re-read recent changes: a slow transaction commits late
SYNC_CHUNK = 10_000  # rows per chunk when syncing (full or incremental): bounded memory


def spec_from_row(row) -> MonitorSpec:
    """Validate one `monitors` row; raise InvalidMonitor with a one-line reason."""
    mid = row["id"]
    kind = (row["type"] or "").lower()
    interval = row["interval_seconds"]
    if interval is None or not 1 <= interval <= 86400:
        raise InvalidMonitor(f"monitor {mid}: interval_seconds must be 1..86400, got {interval}")
    timeout = row["timeout_ms"]
    if timeout is None or not 1 <= timeout <= 600_000:
        raise InvalidMonitor(f"monitor {mid}: timeout_ms must be 1..600000, got {timeout}")
    retries = row["retries"]
    if retries is None or not 0 <= retries <= 10:
        raise InvalidMonitor(f"monitor {mid}: retries must be 0..10, got {retries}")
    common = dict(id=mid, type=kind, interval_s=interval, timeout_ms=timeout, retries=retries)
    if kind == "http":
        url = row["url"] or ""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidMonitor(f"monitor {mid}: url must be http(s)://host/…, got {url[:100]!r}")
        expected = row["expected_status"] or "200-299"
        try:
            parse_expected_status(expected)  # the probes' own parser: one rule for what is valid
        except InvalidMonitor as exc:
            raise InvalidMonitor(f"monitor {mid}: {exc}") from None
        headers = row["headers"] or {}
        if isinstance(headers, str):
            headers = orjson.loads(headers)
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise InvalidMonitor(f"monitor {mid}: headers must be a JSON object of strings")
        return MonitorSpec(**common, url=url, method=(row["method"] or "GET").upper(),
                           headers=headers, body=row["body"], expected_status=expected,
                           keyword=row["keyword"] or None, invert_keyword=bool(row["invert_keyword"]),
                           follow_redirects=row["follow_redirects"] is not False,
                           verify_tls=row["verify_tls"] is not False)
    if kind == "tcp":
        host, port = row["host"], row["port"]
        if not host:
            raise InvalidMonitor(f"monitor {mid}: tcp monitor needs a host")
        if port is None or not 1 <= port <= 65535:
            raise InvalidMonitor(f"monitor {mid}: port must be 1..65535, got {port}")
        return MonitorSpec(**common, host=host, port=port, tcp_send=row["tcp_send"],
                           tcp_expect=row["tcp_expect"])
    raise InvalidMonitor(f"monitor {mid}: type must be 'http' or 'tcp', got {row['type']!r}")


@dataclass
class _Tally:
    """What one sync applied: counts for its log lines, and the first specs (to log one by one
    when the sync is small)."""
    added: int = 0
    moved: int = 0
    removed: int = 0
    count: int = 0
    shown: list[MonitorSpec] = field(default_factory=list)


class Scheduler:
    def __init__(self, settings: Settings, queue: Queue, holder: str) -> None:
        self.settings = settings
        self.s = settings.scheduler
        self.queue = queue
        self.holder = holder
        self.keys = queue.keys
        self.leader = False
        self.cursor: datetime | None = None
        self.deletions_cursor: datetime | None = None
        self.applied: dict[int, datetime] = {}  # id -> updated_at applied (within the overlap window)
        self.bad: dict[int, datetime] = {}      # invalid rows already reported
        self.last_full = 0.0
        self._pg: asyncpg.Connection | None = None
        self._pg_healthy = True
        self._redis_healthy = True

    async def _conn(self) -> asyncpg.Connection:
        if self._pg is None or self._pg.is_closed():
            self._pg = await asyncpg.connect(self.settings.postgres.dsn, timeout=5, command_timeout=60)
        return self._pg

    async def run(self, stopping: asyncio.Event) -> None:
        """Supervised upkeep loop: a failure is logged once and retried next round."""
        while not stopping.is_set():
            try:
                await self.tick()
                self._redis_healthy = True
                if not self._pg_healthy:
                    log.warning("scheduler reaches PostgreSQL again")
                    self._pg_healthy = True
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if self._pg is not None and not self._pg.is_closed():
                    self._pg.terminate()
                self._pg = None
                if self._pg_healthy:
                    log.warning("scheduler cannot sync from PostgreSQL: %s", str(exc).splitlines()[0][:200])
                    self._pg_healthy = False
            except RedisError as exc:
                if self.leader or self._redis_healthy:
                    log.warning("scheduler cannot reach Dragonfly: %s", exc)
                self.leader = self._redis_healthy = False
            except Exception:  # noqa: BLE001 - supervised loop: log and carry on
                log.exception("scheduler round failed")
            try:
                await asyncio.wait_for(stopping.wait(), self.s.sync_ms / 1000)
            except asyncio.TimeoutError:
                pass
        if self.leader:
            await self._resign()

    async def tick(self) -> None:
        if not await self._hold_lock():
            return
        epoch_gone = not await self.queue.redis.exists(self.keys.epoch)
        if epoch_gone and self.last_full:
            log.warning("the queue store lost its data (restarted empty?): rebuilding from PostgreSQL")
        if epoch_gone or self.cursor is None or time.monotonic() - self.last_full > self.s.full_sync_s:
            await self.full_sync()
        else:
            await self.incremental_sync()

    async def _hold_lock(self) -> bool:
        redis, ttl = self.queue.redis, self.s.lock_ttl_ms
        if self.leader:
            if await self.queue.renew_lock(self.keys.scheduler_lock, self.holder, ttl):
                return True
            log.warning("scheduler lost its lease; another process schedules now")
            self.leader = False
            return False
        if await redis.set(self.keys.scheduler_lock, self.holder, nx=True, px=ttl):
            self.leader = True
            self.cursor = None  # full sync on taking over
            log.info("this process is the scheduler (%s)", self.holder)
            return True
        return False

    async def _resign(self) -> None:
        try:
            if await self.queue.redis.get(self.keys.scheduler_lock) == self.holder.encode():
                await self.queue.redis.delete(self.keys.scheduler_lock)
        except RedisError:
            pass

    async def full_sync(self) -> None:
        """Stream every monitor in chunks (bounded memory), upsert each chunk, renew the leader
        lease between chunks (a 1M-monitor sync outlives one lease), then drop what the queue
        holds that PostgreSQL no longer enables."""
        started = time.monotonic()
        conn = await self._conn()
        await conn.execute("DELETE FROM monitor_deletions WHERE deleted_at < now() - interval '1 day'")
        now = await conn.fetchval("SELECT clock_timestamp()")
        enabled: set[int] = set()
        tally = _Tally()
        self.applied = {}
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            cursor = await conn.cursor(f"SELECT {COLUMNS} FROM monitors")
            while rows := await cursor.fetch(SYNC_CHUNK):
                specs = await self._apply(rows, tally)
                enabled.update(spec.id for spec in specs)
                self.applied.update((r["id"], r["updated_at"]) for r in rows if r["updated_at"] > now - OVERLAP)
                if not await self._still_leader(rows, "full sync"):
                    return
        for pk in self.keys.partitions:  # one partition at a time: bounded memory
            stale = await self.queue.partition_ids(pk) - enabled
            tally.removed += await self.queue.remove(sorted(stale)) if stale else 0
        await self.queue.redis.set(self.keys.epoch, str(int(time.time())))
        self.cursor = self.deletions_cursor = now
        self.last_full = time.monotonic()
        self._log_scheduled(tally)
        log.info("queue ready: full sync of %d enabled monitors (%d new, %d rescheduled, %d removed) "
                 "in %.2f s", tally.count, tally.added, tally.moved, tally.removed,
                 time.monotonic() - started)

    async def incremental_sync(self) -> None:
        """Apply the rows changed since the last sync, streamed in chunks like the full sync (a
        bulk UPDATE of a million monitors must not be fetched at once: +600 MB in one worker when
        it was), renewing the lease between chunks; then drop deleted monitors."""
        conn = await self._conn()
        now = await conn.fetchval("SELECT clock_timestamp()")
        deleted = await conn.fetch("SELECT DISTINCT monitor_id FROM monitor_deletions "
                                   "WHERE deleted_at > $1", self.deletions_cursor - OVERLAP)
        gone = {r["monitor_id"] for r in deleted}
        tally = _Tally()
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            cursor = await conn.cursor(f"SELECT {COLUMNS} FROM monitors WHERE updated_at > $1",
                                       self.cursor - OVERLAP)
            while chunk := await cursor.fetch(SYNC_CHUNK):
                rows = [r for r in chunk if self.applied.get(r["id"]) != r["updated_at"]]
                if rows:
                    gone.difference_update(r["id"] for r in rows)
                    await self._apply(rows, tally)
                    for r in rows:
                        self.applied[r["id"]] = r["updated_at"]
                if not await self._still_leader(chunk, "sync"):
                    return
        if tally.count or tally.removed:
            self._log_scheduled(tally, unscheduled=True)
        if gone:
            n = await self.queue.remove(sorted(gone))
            if n:
                log.info("Removed %d deleted monitors from the queue", n)
        self.cursor = self.deletions_cursor = now
        horizon = now - OVERLAP
        self.applied = {k: v for k, v in self.applied.items() if v > horizon}

    def _specs(self, rows) -> tuple[list[MonitorSpec], set[int]]:
        """Valid enabled rows as specs; ids to drop (disabled or invalid). Bad rows are logged
        once per version of the row, each in one line."""
        specs, dropped = [], set()
        for row in rows:
            if not row["enabled"]:
                dropped.add(row["id"])
                continue
            try:
                specs.append(spec_from_row(row))
            except (InvalidMonitor, ValueError, TypeError) as exc:
                dropped.add(row["id"])
                if self.bad.get(row["id"]) != row["updated_at"]:
                    self.bad[row["id"]] = row["updated_at"]
                    log.error("skipping invalid monitor: %s", exc)
        return specs, dropped

    async def _apply(self, rows, tally: _Tally) -> list[MonitorSpec]:
        """Upsert a chunk's valid enabled rows, remove its disabled or invalid ones; count them."""
        specs, dropped = self._specs(rows)
        added, moved = await self.queue.upsert(specs) if specs else (0, 0)
        tally.removed += await self.queue.remove(sorted(dropped)) if dropped else 0
        tally.added, tally.moved, tally.count = tally.added + added, tally.moved + moved, tally.count + len(specs)
        if len(tally.shown) <= self.s.log_each_limit:
            tally.shown.extend(specs[: self.s.log_each_limit + 1 - len(tally.shown)])
        return specs

    async def _still_leader(self, chunk, what: str) -> bool:
        """Between full chunks, renew the lease (a long sync outlives one); False if it was lost."""
        if len(chunk) == SYNC_CHUNK and not await self._hold_lock():
            log.warning("%s stopped: this process is no longer the scheduler", what)
            return False
        return True

    def _log_scheduled(self, tally: _Tally, unscheduled: bool = False) -> None:
        if tally.count <= self.s.log_each_limit:
            for spec in tally.shown:
                log.info("Scheduled monitor %d to run every %d seconds", spec.id, spec.interval_s)
        else:
            log.info("Scheduled %d monitors (%d new, %d rescheduled)", tally.count, tally.added, tally.moved)
        if unscheduled and tally.removed:
            log.info("Unscheduled %d disabled or invalid monitors", tally.removed)

    async def close(self) -> None:
        if self._pg is not None:
            await self._pg.close()
            self._pg = None
