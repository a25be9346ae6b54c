"""ClickHouse: a small HTTP client and the results batcher (every attempt becomes one row).

Rows are kept as Structs and encoded by one `encode_lines` call per ack batch (JSONEachRow) into a
write-ahead segment file; each sealed segment becomes one INSERT. Memory holds at most one ack
batch of rows; a ClickHouse outage only lets sealed segments pile up on disk (the spool).
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from pathlib import Path

import aiohttp
import msgspec

from engine import metrics
from engine.errors import ServiceUnavailable
from engine.settings import ClickHouseSettings, SinkSettings

log = logging.getLogger("engine.sinks.clickhouse")


class ClickHouseError(Exception):
    """ClickHouse answered with an error (bad query, bad data): one line, never the password."""

    @property
    def code(self) -> int:
        m = re.search(r"Code: (\d+)", str(self))
        return int(m.group(1)) if m else 0


# Error codes that mean "this data cannot be parsed or stored as sent" (a damaged segment), as
# opposed to a missing table, bad credentials or an overloaded server, which a retry can outlive:
# CANNOT_PARSE_TEXT, _QUOTED_STRING, _INPUT_ASSERTION_FAILED, ATTEMPT_TO_READ_AFTER_EOF,
# CANNOT_READ_ALL_DATA, CANNOT_PARSE_DATE, _DATETIME, TYPE_MISMATCH, ARGUMENT_OUT_OF_BOUND,
# CANNOT_CONVERT_TYPE, CANNOT_PARSE_NUMBER, INCORRECT_DATA.
DATA_ERRORS = frozenset({6, 26, 27, 32, 33, 38, 41, 53, 69, 70, 72, 117})


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
    """Every result goes to a write-ahead segment file before its job is acknowledged, and
    ClickHouse gets one bulk INSERT per sealed segment (one per `flush_ms`, or `clickhouse_batch`
    rows). While ClickHouse is down, sealed segments simply stay on disk (the spool) and are sent
    oldest first when it returns; a killed worker's segments are picked up by the next one.

    Files in `spool_dir`: `<name>.<pid>.open` (being appended), `<time_ns>-<pid>-<rows>.jsonl`
    (sealed, waiting), `<sealed name>.<pid>.sending` (claimed by a sender).
    """

    def __init__(self, ch: ClickHouse, settings: SinkSettings, spool_name: str) -> None:
        self.ch = ch
        self.settings = settings
        self.table = f"{ch.settings.database}.check_results"
        self.rows: list[ResultRow] = []   # not yet in a segment
        self.spool_dir = Path(settings.spool_dir)
        self.open_path = self.spool_dir / f"{spool_name}.{os.getpid()}.open"
        self._fd = -1
        self._open_rows = 0
        self._encoder = msgspec.json.Encoder()
        self._whole_seconds = True  # DateTime (18.16) takes whole seconds; DateTime64 servers take ms
        self._insert_settings: dict = {}
        self.healthy = True
        self.inserted = 0
        self.inserts = 0
        self.errors = 0
        self.wake = asyncio.Event()

    async def start(self) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
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

    def pending(self) -> int:
        """Results not yet in ClickHouse that this worker knows of (memory, open and sealed)."""
        return len(self.rows) + self._open_rows + sum(_rows_of(p) for p in self._sealed())

    def journal(self) -> None:
        """Append buffered rows to the open segment (one write). Called before every ack batch,
        so a result is on disk before its job is acknowledged."""
        if not self.rows:
            return
        if self._fd < 0:
            self._fd = os.open(self.open_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        data = self._encoder.encode_lines(self.rows)
        os.write(self._fd, data)
        self._open_rows += len(self.rows)
        self.rows = []
        if self._open_rows >= self.settings.clickhouse_batch:
            self.wake.set()

    def seal(self) -> None:
        """Close the open segment and make it a sealed one, ready to send."""
        self.journal()
        if self._fd < 0:
            return
        os.close(self._fd)
        self._fd = -1
        os.replace(self.open_path, self.spool_dir / f"{time.time_ns()}-{os.getpid()}-{self._open_rows}.jsonl")
        self._open_rows = 0

    async def flush(self) -> bool:
        """Seal the open segment and send every sealed one, oldest first. False if ClickHouse
        (or the disk) failed; what was not sent stays on disk."""
        try:
            self.seal()
            for path in self._sealed():
                await self._send(path)
        except (ServiceUnavailable, ClickHouseError, OSError) as exc:
            self.errors += 1
            metrics.flush_error("clickhouse")
            self.enforce_limits()
            metrics.spooled(self.pending())
            if self.healthy:
                log.warning("results are being kept until ClickHouse accepts them: %s", exc)
                self.healthy = False
            return False
        if not self.healthy:
            log.warning("ClickHouse accepts results again; backlog written")
            self.healthy = True
            metrics.spooled(0)
        return True

    async def _send(self, path: Path) -> None:
        # Several workers share the spool folder: a rename claims a file for one of them.
        claimed = path.with_name(f"{path.name}.{os.getpid()}.sending")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return
        try:
            body = claimed.read_bytes()
            if body:
                await self.ch.insert(self.table, body, self._insert_settings)
        except ClickHouseError as exc:
            if exc.code not in DATA_ERRORS:
                os.rename(claimed, path)
                raise
            # A damaged segment must not hold back every result behind it: set it aside, whole.
            aside, rows = path.with_name(path.name + ".rejected"), _rows_of(path)
            os.rename(claimed, aside)
            metrics.results_rejected(rows)
            log.error("ClickHouse rejected %s (%d results) as malformed, kept as %s: %s", path.name,
                      rows, aside.name, exc)
            return
        except BaseException:
            os.rename(claimed, path)
            raise
        claimed.unlink()
        n = _rows_of(path)
        self.inserted += n
        self.inserts += 1
        metrics.batch_written("clickhouse", n)

    def enforce_limits(self) -> int:
        """Drop the oldest sealed segments while the spool is over `spool_max_mb` or its disk has
        less than `spool_min_free_mb` free: a long outage then costs its oldest results, never the
        host. Returns the rows dropped (logged as an error and counted)."""
        cap, floor = self.settings.spool_max_mb << 20, self.settings.spool_min_free_mb << 20
        if not cap and not floor:
            return 0
        sizes = []
        for path in self._sealed():
            try:
                sizes.append((path, path.stat().st_size))
            except FileNotFoundError:
                continue  # sent or dropped by another worker meanwhile
        total = sum(size for _, size in sizes)
        try:
            st = os.statvfs(self.spool_dir)
            free = st.f_bavail * st.f_frsize
        except OSError:
            free = floor
        dropped = files = 0
        for path, size in sizes:
            if not ((cap and total > cap) or (floor and free < floor)):
                break
            doomed = path.with_name(f"{path.name}.{os.getpid()}.dropping")
            try:
                os.rename(path, doomed)  # claimed: another worker cannot send or drop it too
                os.unlink(doomed)
            except FileNotFoundError:
                continue
            total -= size
            free += size
            dropped += _rows_of(path)
            files += 1
        if dropped:
            metrics.results_dropped(dropped)
            log.error("spool over its limit (%.0f MB in %s, %.0f MB free on its disk): dropped the "
                      "oldest %d results (%d segments) while ClickHouse is unreachable",
                      total / 2**20, self.spool_dir, free / 2**20, dropped, files)
        return dropped

    def reclaim_orphans(self) -> None:
        """Seal the open segments of killed processes and give back what they were sending."""
        for path in self.spool_dir.glob("*.dropping"):  # a drop cut short by a kill
            path.unlink(missing_ok=True)
        for path in list(self.spool_dir.glob("*.open")) + list(self.spool_dir.glob("*.sending")):
            pid = int(path.name.rsplit(".", 2)[-2])
            if _alive(pid):
                continue
            if path.suffix == ".open":
                data = path.read_bytes()
                whole = data.rfind(b"\n") + 1
                if whole < len(data):  # the process died inside a write: drop the partial row
                    os.truncate(path, whole)
                rows = data.count(b"\n")
                os.replace(path, self.spool_dir / f"{time.time_ns()}-{pid}-{rows}.jsonl")
                log.warning("recovered %d results a killed worker had not sent", rows)
            else:
                os.replace(path, path.with_name(path.name.rsplit(".", 3)[0]))

    def _sealed(self) -> list[Path]:
        return sorted(self.spool_dir.glob("*.jsonl"), key=lambda p: int(p.name.split("-", 1)[0]))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    async def run(self, stopping: asyncio.Event) -> None:
        """Flush every `flush_ms` (sooner when a segment is full), backing off while ClickHouse is down."""
        delay = self.settings.flush_ms / 1000
        while not stopping.is_set():
            try:
                await asyncio.wait_for(self.wake.wait(), delay)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            ok = await self.flush()
            delay = self.settings.flush_ms / 1000 if ok else min(delay * 2, 3.0)  # recovery waits at most this


def _rows_of(path: Path) -> int:
    try:
        return int(path.name.split(".", 1)[0].rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
