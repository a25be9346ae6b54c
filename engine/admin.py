"""Operator commands that talk to the services: monitors, status, history."""
from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path

import asyncpg
import orjson

from engine.errors import InvalidMonitor, ServiceUnavailable
from engine.queue import Queue, connect
from engine.scheduler import spec_from_row
from engine.stats import merged_percentile
from engine.settings import Settings, redact_url

MONITOR_FIELDS = ("name", "type", "url", "host", "port", "interval_seconds", "timeout_ms", "enabled",
                  "retries", "method", "headers", "body", "expected_status", "keyword",
                  "invert_keyword", "follow_redirects", "verify_tls", "tcp_send", "tcp_expect")
DEFAULTS = {"name": "", "interval_seconds": 60, "timeout_ms": 10000, "enabled": True, "retries": 3,
            "method": "GET", "headers": {}, "body": None, "expected_status": "200-299",
            "keyword": None, "invert_keyword": False, "follow_redirects": True, "verify_tls": True,
            "url": None, "host": None, "port": None, "tcp_send": None, "tcp_expect": None}
_INTS = {"port", "interval_seconds", "timeout_ms", "retries"}
_BOOLS = {"enabled", "invert_keyword", "follow_redirects", "verify_tls"}
_TRUE, _FALSE = ("true", "1", "yes", "y", "on"), ("false", "0", "no", "n", "off")


async def open_pg(settings: Settings) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(settings.postgres.dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise ServiceUnavailable(f"PostgreSQL at {redact_url(settings.postgres.dsn)} is unreachable: "
                                 f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def target_row(target: str) -> dict:
    """`https://x/y` -> an http monitor; `host:port` or `[::1]:port` -> a tcp monitor."""
    if "://" in target:
        return {"type": "http", "url": target}
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise InvalidMonitor(f"target {target!r} is neither a URL nor HOST:PORT")
    return {"type": "tcp", "host": host.strip("[]"), "port": int(port)}


def _coerce(key: str, value):
    """One field from CSV (always text) or JSON (typed) to the column's type; ValueError if not."""
    if key in _INTS:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(value.strip() if isinstance(value, str) else value)
    if key in _BOOLS:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in _TRUE + _FALSE:
            raise ValueError(value)
        return text in _TRUE
    if key == "headers":
        value = json.loads(value) if isinstance(value, str) else value
        if not isinstance(value, dict):
            raise ValueError(value)
        return value
    if not isinstance(value, str):
        raise ValueError(value)
    return value


def normalize(raw: dict) -> dict:
    """A monitor row from CSV/JSON: coerce types, fill defaults, validate like the scheduler does."""
    if None in raw:  # csv.DictReader puts values beyond the header under None
        raise InvalidMonitor("more values than header columns")
    unknown = set(raw) - set(MONITOR_FIELDS) - {"id"}
    if unknown:
        raise InvalidMonitor(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    row = dict(DEFAULTS)
    for key, value in raw.items():
        if key == "id" or value is None or value == "":
            continue
        try:
            row[key] = _coerce(key, value)
        except (ValueError, TypeError):
            raise InvalidMonitor(f"{key}: {str(value)[:60]!r} is not a valid {key}") from None
    if not row.get("type"):
        row["type"] = "http" if row.get("url") else "tcp"
    row["type"] = row["type"].lower()
    try:
        spec_from_row({**row, "id": 0})
    except InvalidMonitor as exc:  # "monitor 0: url must be …" -> "url must be …"
        raise InvalidMonitor(str(exc).removeprefix("monitor 0: ")) from None
    return row


async def insert_monitors(conn: asyncpg.Connection, rows: list[dict]) -> list[int]:
    cols = ", ".join(MONITOR_FIELDS)
    marks = ", ".join(f"${i + 1}" for i in range(len(MONITOR_FIELDS)))
    ids = []
    async with conn.transaction():
        for row in rows:
            values = [orjson.dumps(row[f]).decode() if f == "headers" else row[f] for f in MONITOR_FIELDS]
            ids.append(await conn.fetchval(
                f"INSERT INTO monitors ({cols}) VALUES ({marks.replace('$11', '$11::jsonb')}) RETURNING id",
                *values))
    return ids


_PG_TYPES = {"port": "int", "interval_seconds": "int", "timeout_ms": "int", "retries": "int",
             "enabled": "bool", "invert_keyword": "bool", "follow_redirects": "bool",
             "verify_tls": "bool", "headers": "jsonb"}


async def import_monitors(conn: asyncpg.Connection, rows: list[dict], chunk: int = 5000) -> int:
    """Insert validated rows in one transaction (all or nothing), a chunk per statement."""
    cols = ", ".join(MONITOR_FIELDS)
    arrays = ", ".join(f"${i + 1}::{'text' if _PG_TYPES.get(f) == 'jsonb' else _PG_TYPES.get(f, 'text')}[]"
                       for i, f in enumerate(MONITOR_FIELDS))
    select = ", ".join(f"{f}::jsonb" if _PG_TYPES.get(f) == "jsonb" else f for f in MONITOR_FIELDS)
    sql = f"INSERT INTO monitors ({cols}) SELECT {select} FROM unnest({arrays}) AS u({cols})"
    async with conn.transaction():
        for i in range(0, len(rows), chunk):
            part = rows[i:i + chunk]
            await conn.execute(sql, *[[orjson.dumps(r[f]).decode() if f == "headers" else r[f] for r in part]
                                      for f in MONITOR_FIELDS])
    return len(rows)


def read_rows(path: str) -> list[tuple[int, dict]]:
    """(line number, raw row) from a CSV file with a header line, or from JSON lines (one object a
    line). The format comes from the extension (.csv, .jsonl, .ndjson, .json), else from the text."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig") if path != "-" else sys.stdin.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidMonitor(f"cannot read {path}: {exc}") from None
    ext = Path(path).suffix.lower()
    is_json = ext in (".jsonl", ".ndjson", ".json") or (ext != ".csv" and text.lstrip()[:1] in ("{", ""))
    if is_json:
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                out.append((n, {"__error__": f"not JSON: {exc}"}))
                continue
            out.append((n, obj if isinstance(obj, dict) else {"__error__": "not a JSON object"}))
        return out
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        return []
    out = []
    start = 2  # the header is line 1; a quoted field may span lines, so track where each row began
    for r in reader:
        if any(v not in (None, "") for v in r.values()):
            out.append((start, {k.strip() if isinstance(k, str) else k: v for k, v in r.items()}))
        start = reader.line_num + 1
    return out


async def monitors(settings: Settings, args) -> int:
    conn = await open_pg(settings)
    try:
        if args.action == "add":
            row = normalize({**target_row(args.target), "name": args.name, "interval_seconds": args.interval,
                             "timeout_ms": args.timeout_ms, "retries": args.retries,
                             "keyword": args.keyword, "expected_status": args.expected_status})
            (mid,) = await insert_monitors(conn, [row])
            print(f"added monitor {mid}")
            return 0
        if args.action == "disable":
            found = await conn.fetch("UPDATE monitors SET enabled = false WHERE id = ANY($1) RETURNING id",
                                     args.ids)
            missing = sorted(set(args.ids) - {r["id"] for r in found})
            print(f"disabled {len(found)} monitor(s)")
            if missing:
                print(f"uptime-engine: no monitor with id {', '.join(map(str, missing))}", file=sys.stderr)
                return 2
            return 0
        if args.action == "list":
            rows = await conn.fetch(
                "SELECT m.id, m.name, m.type, coalesce(m.url, m.host || ':' || m.port) AS target, "
                "m.interval_seconds, m.enabled, s.status, s.last_checked_at, s.last_error "
                "FROM monitors m LEFT JOIN monitor_status s ON s.monitor_id = m.id ORDER BY m.id")
            if args.json:
                for r in rows:
                    print(orjson.dumps(dict(r), default=str).decode())
            else:
                print(f"{'ID':>8}  {'TYPE':4}  {'EVERY':>6}  {'ON':3}  {'STATUS':8}  TARGET")
                for r in rows:
                    print(f"{r['id']:>8}  {r['type']:4}  {r['interval_seconds']:>5}s  "
                          f"{'yes' if r['enabled'] else 'no':3}  {r['status'] or '-':8}  {r['target']}")
            return 0
        if args.action == "import":
            return await _import(conn, args.file, args.partial)
    finally:
        await conn.close()
    return 2


async def _import(conn: asyncpg.Connection, path: str, partial: bool) -> int:
    """Validate every row; report each bad one as FILE:LINE: reason; import all or (unless
    `partial`) nothing. Exit code 0 when every row was imported, else 2."""
    good, bad = [], []
    for line, raw in read_rows(path):
        try:
            if "__error__" in raw:
                raise InvalidMonitor(raw["__error__"])
            good.append(normalize(raw))
        except InvalidMonitor as exc:
            bad.append((line, str(exc)))
    for line, why in bad:
        print(f"{path}:{line}: {why}", file=sys.stderr)
    if bad and not partial:
        print(f"uptime-engine: {len(bad)} bad row(s); nothing imported (use --partial to "
              f"import the {len(good)} good ones)", file=sys.stderr)
        return 2
    try:
        n = await import_monitors(conn, good)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        print(f"uptime-engine: nothing imported: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"imported {n} monitor(s)" + (f", skipped {len(bad)} bad row(s)" if bad else ""))
    return 2 if bad else 0


async def open_queue(settings: Settings) -> Queue:
    from redis.exceptions import RedisError
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    redis = connect(settings.dragonfly)
    redis.set_retry(Retry(NoBackoff(), 1))  # an operator's command fails fast, with one line
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        await redis.aclose()
        raise ServiceUnavailable(f"Dragonfly at {settings.dragonfly.host}:{settings.dragonfly.port} "
                                 f"is unreachable: {exc}") from None
    return Queue(redis, settings.dragonfly.prefix, settings.queue)


LIVE_S = 5.0      # a worker heartbeat older than this is not counted (workers beat every second)
SINKS = ("clickhouse", "postgres", "dragonfly")


def _host() -> dict:
    return {"workers": 0, "checks_per_s": 0.0, "checks_1m": 0, "in_flight": 0,
            "lateness_p50_ms": 0.0, "lateness_p99_ms": 0.0, "sinks": {},
            "buffered_results": 0, "buffered_statuses": 0, "_digests": [], "_worst": [0.0, 0.0]}


def _add_worker(h: dict, w: dict, now: float) -> None:
    h["workers"] += 1
    # A worker younger than a minute has counted for less than a minute.
    window = min(60.0, max(1.0, now - w["started"])) if w.get("started") else 60.0
    h["checks_per_s"] += w.get("checks_1m", 0) / window
    h["checks_1m"] += w.get("checks_1m", 0)
    h["in_flight"] += w.get("in_flight", 0)
    # Each worker publishes its last minute's lateness as a digest, merged in _rounded() weighted
    # by checks. A worker without one (an older version) counts with its own percentiles, the
    # worst kept.
    if w.get("lateness_digest"):
        h["_digests"].append((w["lateness_digest"], w.get("checks_1m", 0)))
    else:
        h["_worst"][0] = max(h["_worst"][0], w.get("lateness_p50_ms", 0.0))
        h["_worst"][1] = max(h["_worst"][1], w.get("lateness_p99_ms", 0.0))
    for sink, healthy in w.get("sinks", {}).items():
        h["sinks"][sink] = h["sinks"].get(sink, True) and bool(healthy)
    buffered = w.get("buffered", {})
    h["buffered_results"] += buffered.get("results", 0)
    h["buffered_statuses"] += buffered.get("statuses", 0)


def _rounded(h: dict) -> dict:
    """The figures of `_add_worker`'s sums, finished (lateness merged once) and rounded."""
    worst, digests = h["_worst"], h["_digests"]
    out = {k: v for k, v in h.items() if not k.startswith("_")}
    out["checks_per_s"] = round(h["checks_per_s"], 1)
    out["lateness_p50_ms"] = round(max(worst[0], merged_percentile(digests, 0.5)), 1)
    out["lateness_p99_ms"] = round(max(worst[1], merged_percentile(digests, 0.99)), 1)
    return out


async def read_workers(queue: Queue) -> tuple[list[dict], int]:
    """(live workers' heartbeat records with their id, count of stale ones)."""
    raw = await queue.redis.hgetall(queue.keys.workers)
    now = time.time()
    live, stale = [], 0
    for wid, blob in sorted(raw.items()):
        try:
            info = orjson.loads(blob)
        except orjson.JSONDecodeError:
            continue
        if now - info.get("ts", 0) > LIVE_S:
            stale += 1  # a killed worker's last heartbeat (it could not remove it)
        else:
            live.append({**info, "id": wid.decode()})
    return live, stale


async def collect_status(queue: Queue, heartbeats: tuple[list[dict], int] | None = None) -> dict:
    """Queue figures from the partitions, live figures from the workers' heartbeats (per probe
    host and in total; pass `read_workers()`'s answer if it was already read). Raises
    ServiceUnavailable if Dragonfly stops answering."""
    from redis.exceptions import RedisError

    try:
        depth = await queue.depth()
        workers, stale = heartbeats or await read_workers(queue)
        leader = await queue.redis.get(queue.keys.scheduler_lock)
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable(f"Dragonfly stopped answering: {exc}") from None
    now = time.time()
    hosts: dict[str, dict] = {}
    total = _host()
    for info in workers:
        _add_worker(hosts.setdefault(info.get("probe", "?"), _host()), info, now)
        _add_worker(total, info, now)
    total = _rounded(total)
    total["probes"] = len(hosts)
    total["stale_workers"] = stale
    total["due_backlog"] = sum(depth["due"])
    for sink in SINKS:
        total["sinks"].setdefault(sink, None)  # None = no live worker reports it
    return {
        "queue": {"monitors": sum(depth["waiting"]) + sum(depth["in_flight"]),
                  "due_backlog": sum(depth["due"]), "in_flight": sum(depth["in_flight"]),
                  "partitions": len(depth["due"]), "max_partition_backlog": max(depth["due"], default=0)},
        "scheduler": leader.decode() if leader else None,
        "total": total,
        "probes": {name: _rounded(h) for name, h in sorted(hosts.items())},
    }


def _sinks_text(sinks: dict) -> str:
    return " ".join(f"{k}={'-' if v is None else 'ok' if v else 'DOWN'}" for k, v in sorted(sinks.items()))


def status_table(st: dict) -> str:
    q, t = st["queue"], st["total"]
    lines = [f"queue: {q['monitors']} monitors in {q['partitions']} partitions, due backlog "
             f"{q['due_backlog']}, in flight {q['in_flight']}; scheduler: {st['scheduler'] or 'none'}",
             f"{'PROBE':20} {'WORKERS':>7} {'CHECKS/S':>9} {'IN-FLIGHT':>9} {'LATE p50':>9} "
             f"{'LATE p99':>9} {'BUFFERED':>8}  SINKS"]
    rows = list(st["probes"].items()) + [("total", t)]
    for name, h in rows:
        lines.append(f"{name[:20]:20} {h['workers']:>7} {h['checks_per_s']:>9.1f} {h['in_flight']:>9} "
                     f"{h['lateness_p50_ms']:>7.0f}ms {h['lateness_p99_ms']:>7.0f}ms "
                     f"{h['buffered_results']:>8}  {_sinks_text(h['sinks'])}")
    if t["stale_workers"]:
        lines.append(f"({t['stale_workers']} worker heartbeat(s) older than {LIVE_S:.0f} s not counted)")
    if not t["workers"]:
        lines.append("no live workers: is `uptime-engine run` running against this Dragonfly?")
    return "\n".join(lines)


async def status(settings: Settings, args) -> int:
    queue = await open_queue(settings)
    try:
        st = await collect_status(queue)
    finally:
        await queue.redis.aclose()
    if args.json:
        print(orjson.dumps(st, option=orjson.OPT_INDENT_2).decode())
    else:
        print(status_table(st))
    return 0


async def history(settings: Settings, args) -> int:
    queue = await open_queue(settings)
    try:
        entries = await queue.history(args.monitor_id)
    finally:
        await queue.redis.aclose()
    if args.json:
        for e in entries:
            print(orjson.dumps(e).decode())
        return 0
    if not entries:
        print(f"no job history for monitor {args.monitor_id}")
        return 0
    print(f"{'TICK (UTC)':23} {'ATT':>3} {'EVENT':9} {'OUTCOME':8} {'DUR ms':>8} {'LATE ms':>8} WORKER / DETAIL")
    for e in entries:
        tick = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.get("tick", 0) / 1000)) + \
            f".{e.get('tick', 0) % 1000:03d}"
        detail = e.get("why") or (f"{e['kind']}: {e['error']}" if e.get("kind") else "")
        print(f"{tick:23} {e.get('attempt', 0):>3} {e.get('event', ''):9} {e.get('outcome', '-'):8} "
              f"{e.get('duration_ms', 0):>8} {e.get('lateness_ms', 0):>8} {e.get('worker', '')} "
              f"{detail}{' (stale)' if e.get('stale') else ''}")
    return 0
