"""ClickHouse: a small HTTP client and the results batcher (every attempt becomes one row).

Rows are kept as Structs and encoded in one `encode_lines` call per INSERT (JSONEachRow): one
encoder per worker, no per-row Python dict. If ClickHouse is unreachable, rows stay in memory (up to
`sinks.max_buffered`), then go to an on-disk spool; both are written, oldest first, when it returns.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from pathlib import Path

import aiohttp
import msgspec

from engine import metrics
from engine.errors import ServiceUnavailable
from engine.settings import ClickHouseSettings, SinkSettings

log = logging.getLogger("engine.sinks.clickhouse")


class ClickHouseError(Exception):
    """ClickHouse answered with an error (bad query, bad data): one line, never the password."""


class ClickHouse:
    def __init__(self, settings: ClickHouseSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._headers = {"X-ClickHouse-User": settings.user} if settings.user else {}
        if settings.password:
            self._headers["X-ClickHouse-Key"] = settings.password

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=aiohttp.ClientTimeout(total=30, connect=5),
                connector=aiohttp.TCPConnector(limit=4, keepalive_timeout=5))
        return self._session

    async def _post(self, params: dict, body: bytes | str) -> str:
        try:
            async with self._http().post(self.settings.url, params=params, data=body) as resp:
                text = await resp.text()
                # An error after the headers went out arrives as a 200 with the exception in the body.
                if resp.status != 200 or (params.get("wait_end_of_query") and "DB::Exception" in text):
                    first = text.strip().splitlines()[0] if text.strip() else f"HTTP {resp.status}"
                    raise ClickHouseError(first[:300])
                return text
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise ServiceUnavailable(f"ClickHouse at {self.settings.url} is unreachable: "
                                     f"{type(exc).__name__}: {exc}"[:300]) from None

    async def execute(self, sql: str) -> str:
        return await self._post({}, sql)

    async def query(self, sql: str) -> list[dict]:
        """Rows of a SELECT as dicts (64-bit integers as numbers)."""
        import orjson
        text = await self._post({"output_format_json_quote_64bit_integers": 0}, sql + " FORMAT JSONEachRow")
        return [orjson.loads(line) for line in text.splitlines() if line.strip()]

    async def version(self) -> tuple[int, ...]:
        text = (await self.execute("SELECT version()")).strip()
        return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())

    async def insert(self, table: str, body: bytes, settings: dict | None = None) -> None:
        # wait_end_of_query: the answer comes after the data is written, so 200 means stored.
        await self._post({"query": f"INSERT INTO {table} FORMAT JSONEachRow", "wait_end_of_query": 1,
                          **(settings or {})}, body)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class ResultRow(msgspec.Struct, omit_defaults=False):
    ts: float
    monitor_id: int
    probe: str
    attempt: int
    ok: int
    status_code: int
    latency_ms: float
    dns_ms: float | None
    connect_ms: float | None
    tls_ms: float | None
    ttfb_ms: float | None
    error_kind: str
    error: str
    scheduled_at: float
    lateness_ms: float
    cert_expiry_days: float | None
    worker: str


class ResultsSink:
    """Buffers result rows and writes them in bulk INSERTs (by size or age); survives outages."""

    def __init__(self, ch: ClickHouse, settings: SinkSettings, spool_name: str) -> None:
        self.ch = ch
        self.settings = settings
        self.table = f"{ch.settings.database}.check_results"
        self.rows: deque[ResultRow] = deque()
        self.spool_dir = Path(settings.spool_dir)
        self.spool_name = spool_name
        self._encoder = msgspec.json.Encoder()
        self._whole_seconds = True  # DateTime (18.16) takes whole seconds; DateTime64 servers take ms
        self._insert_settings: dict = {}
        self.healthy = True
        self.inserted = 0
        self.inserts = 0
        self.errors = 0
        self.wake = asyncio.Event()

    async def start(self) -> None:
        self.reclaim_orphans()
        try:
            if await self.ch.version() >= (20, 1):
                self._whole_seconds = False
                self._insert_settings = {"date_time_input_format": "best_effort"}
        except (ServiceUnavailable, ClickHouseError):
            pass  # decided again at the next start; 18.16 format is the safe default

    def add(self, row: ResultRow) -> None:
        if self._whole_seconds:
            row.ts = int(row.ts)
            row.scheduled_at = int(row.scheduled_at)
        self.rows.append(row)
        if len(self.rows) >= self.settings.clickhouse_batch:
            self.wake.set()

    def pending(self) -> int:
        return len(self.rows)

    async def flush(self) -> bool:
        """Write spooled files, then buffered rows, oldest first. False if ClickHouse failed."""
        try:
            for path in self._spooled():
                await self._send_spooled(path)
            while self.rows:
                n = min(len(self.rows), self.settings.clickhouse_batch)
                batch = [self.rows[i] for i in range(n)]
                await self.ch.insert(self.table, self._encoder.encode_lines(batch), self._insert_settings)
                for _ in range(n):
                    self.rows.popleft()
                self.inserted += n
                self.inserts += 1
                metrics.batch_written("clickhouse", n)
        except (ServiceUnavailable, ClickHouseError, OSError) as exc:
            self.errors += 1
            metrics.flush_error("clickhouse")
            metrics.spooled(len(self.rows))
            if self.healthy:
                log.warning("results are being kept until ClickHouse accepts them: %s", exc)
                self.healthy = False
            if len(self.rows) > self.settings.max_buffered:
                self.spool(len(self.rows) - self.settings.max_buffered // 2)
            return False
        if not self.healthy:
            log.warning("ClickHouse accepts results again; backlog written")
            self.healthy = True
            metrics.spooled(0)
        return True

    def spool(self, count: int | None = None) -> None:
        """Move the oldest `count` buffered rows (default all) to a spool file."""
        count = len(self.rows) if count is None else count
        if count <= 0:
            return
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        batch = [self.rows.popleft() for _ in range(count)]
        name = f"{self.spool_name}-{time.time_ns()}.jsonl"
        tmp = self.spool_dir / (name + ".tmp")
        tmp.write_bytes(self._encoder.encode_lines(batch))
        os.replace(tmp, self.spool_dir / name)
        log.warning("spooled %d results to %s", count, self.spool_dir / name)

    async def _send_spooled(self, path: Path) -> None:
        # Several workers share the spool folder: a rename claims a file for one of them.
        claimed = path.with_name(f"{path.name}.{os.getpid()}.sending")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return
        try:
            await self.ch.insert(self.table, claimed.read_bytes(), self._insert_settings)
        except BaseException:
            os.rename(claimed, path)
            raise
        claimed.unlink()
        log.info("wrote spooled results from %s", path.name)

    def reclaim_orphans(self) -> None:
        """Give back files a killed process was sending (their pid is gone)."""
        if not self.spool_dir.is_dir():
            return
        for path in self.spool_dir.glob("*.jsonl.*.sending"):
            pid = int(path.name.rsplit(".", 2)[-2])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.replace(path, path.with_name(path.name.rsplit(".", 2)[0]))
            except PermissionError:
                pass

    def _spooled(self) -> list[Path]:
        if not self.spool_dir.is_dir():
            return []
        return sorted(self.spool_dir.glob("*.jsonl"), key=lambda p: p.name.rsplit("-", 1)[-1])

    async def run(self, stopping: asyncio.Event) -> None:
        """Flush every `flush_ms` (sooner when a batch is full), backing off while ClickHouse is down."""
        delay = self.settings.flush_ms / 1000
        while not stopping.is_set():
            try:
                await asyncio.wait_for(self.wake.wait(), delay)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            ok = await self.flush()
            delay = self.settings.flush_ms / 1000 if ok else min(delay * 2, 3.0)  # recovery waits at most this
