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


async def _pg(settings: Settings) -> asyncpg.Connection:
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


def normalize(raw: dict) -> dict:
    """A monitor row from CSV/JSON: coerce types, fill defaults, validate like the scheduler does."""
    unknown = set(raw) - set(MONITOR_FIELDS) - {"id"}
    if unknown:
        raise InvalidMonitor(f"unknown field(s) {', '.join(sorted(unknown))}")
    row = dict(DEFAULTS)
    for key, value in raw.items():
        if key == "id" or value is None or value == "":
            continue
        try:
            if key in _INTS:
                value = int(value)
            elif key in _BOOLS and isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                value = value.lower() in ("true", "1", "yes")
            elif key == "headers" and isinstance(value, str):
                value = json.loads(value)
        except (ValueError, TypeError):
            raise InvalidMonitor(f"{key}: {str(value)[:60]!r} is not a valid {key}") from None
        row[key] = value
    if not row.get("type"):
        row["type"] = "http" if row.get("url") else "tcp"
    spec_from_row({**row, "id": 0})  # raises InvalidMonitor with the reason
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


def read_rows(path: str) -> list[tuple[int, dict]]:
    """(line number, raw row) from a CSV file with a header, or from JSON lines."""
    text = Path(path).read_text() if path != "-" else sys.stdin.read()
    first = text.lstrip()[:1]
    if first in ("{", ""):
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    out.append((n, {"__error__": f"not JSON: {exc}"}))
                    continue
                out.append((n, obj if isinstance(obj, dict) else {"__error__": "not a JSON object"}))
        return out
    reader = csv.DictReader(io.StringIO(text))
    return [(reader.line_num, dict(r)) for r in reader]


async def monitors(settings: Settings, args) -> int:
    conn = await _pg(settings)
    try:
        if args.action == "add":
            row = normalize({**target_row(args.target), "name": args.name, "interval_seconds": args.interval,
                             "timeout_ms": args.timeout_ms, "retries": args.retries,
                             "keyword": args.keyword, "expected_status": args.expected_status})
            (mid,) = await insert_monitors(conn, [row])
            print(f"added monitor {mid}")
            return 0
        if args.action == "disable":
            n = await conn.execute("UPDATE monitors SET enabled = false WHERE id = ANY($1)", args.ids)
            print(f"disabled {n.split()[-1]} monitor(s)")
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
            good, bad = [], []
            for line, raw in read_rows(args.file):
                try:
                    if "__error__" in raw:
                        raise InvalidMonitor(raw["__error__"])
                    good.append(normalize(raw))
                except InvalidMonitor as exc:
                    bad.append((line, str(exc)))
            for line, why in bad:
                print(f"{args.file}:{line}: {why}", file=sys.stderr)
            if bad and not args.partial:
                print(f"uptime-engine: {len(bad)} bad row(s); nothing imported (use --partial to "
                      f"import the {len(good)} good ones)", file=sys.stderr)
                return 2
            ids = await insert_monitors(conn, good)
            print(f"imported {len(ids)} monitor(s)" + (f", skipped {len(bad)} bad row(s)" if bad else ""))
            return 2 if bad else 0
    finally:
        await conn.close()
    return 2


async def _queue(settings: Settings) -> Queue:
    from redis.exceptions import RedisError
    redis = connect(settings.dragonfly)
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        await redis.aclose()
        raise ServiceUnavailable(f"Dragonfly at {settings.dragonfly.host}:{settings.dragonfly.port} "
                                 f"is unreachable: {exc}") from None
    return Queue(redis, settings.dragonfly.prefix, settings.queue)


async def collect_status(queue: Queue) -> dict:
    depth = await queue.depth()
    now = time.time()
    workers = []
    for wid, raw in (await queue.redis.hgetall(queue.keys.workers)).items():
        info = orjson.loads(raw)
        if now - info.get("ts", 0) <= 5:
            workers.append({"id": wid.decode(), **info})
    hosts: dict[str, dict] = {}
    for w in workers:
        h = hosts.setdefault(w["probe"], {"workers": 0, "checks_per_s": 0.0, "in_flight": 0,
                                          "lateness_p50_ms": 0.0, "lateness_p99_ms": 0.0, "sinks": {}})
        h["workers"] += 1
        h["checks_per_s"] += w["checks_1m"] / 60
        h["in_flight"] += w["in_flight"]
        h["lateness_p50_ms"] = max(h["lateness_p50_ms"], w["lateness_p50_ms"])
        h["lateness_p99_ms"] = max(h["lateness_p99_ms"], w["lateness_p99_ms"])
        for sink, healthy in w["sinks"].items():
            h["sinks"][sink] = h["sinks"].get(sink, True) and healthy
    leader = await queue.redis.get(queue.keys.scheduler_lock)
    return {
        "queue": {"monitors": sum(depth["waiting"]) + sum(depth["in_flight"]),
                  "due_backlog": sum(depth["due"]), "in_flight": sum(depth["in_flight"]),
                  "partitions": len(depth["due"])},
        "scheduler": leader.decode() if leader else None,
        "total": {"workers": len(workers), "checks_per_s": round(sum(h["checks_per_s"] for h in hosts.values()), 1),
                  "in_flight": sum(h["in_flight"] for h in hosts.values())},
        "probes": {k: {**v, "checks_per_s": round(v["checks_per_s"], 1)} for k, v in hosts.items()},
    }


async def status(settings: Settings, args) -> int:
    queue = await _queue(settings)
    try:
        st = await collect_status(queue)
    finally:
        await queue.redis.aclose()
    if args.json:
        print(orjson.dumps(st, option=orjson.OPT_INDENT_2).decode())
        return 0
    q, t = st["queue"], st["total"]
    print(f"queue: {q['monitors']} monitors in {q['partitions']} partitions, due backlog {q['due_backlog']}, "
          f"in flight {q['in_flight']}; scheduler: {st['scheduler'] or 'none'}")
    print(f"{'PROBE':20} {'WORKERS':>7} {'CHECKS/S':>9} {'IN-FLIGHT':>9} {'LATE p50':>9} {'LATE p99':>9}  SINKS")
    for name, h in sorted(st["probes"].items()):
        sinks = " ".join(f"{k}={'ok' if v else 'DOWN'}" for k, v in sorted(h["sinks"].items()))
        print(f"{name:20} {h['workers']:>7} {h['checks_per_s']:>9.1f} {h['in_flight']:>9} "
              f"{h['lateness_p50_ms']:>7.0f}ms {h['lateness_p99_ms']:>7.0f}ms  {sinks}")
    print(f"{'total':20} {t['workers']:>7} {t['checks_per_s']:>9.1f} {t['in_flight']:>9}")
    return 0


async def history(settings: Settings, args) -> int:
    queue = await _queue(settings)
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
