"""The Dragonfly job queue: per-partition sorted-set delayed queues driven by Lua scripts.

Every call that touches jobs is batched: one pipeline round trip claims from (or finishes jobs in)
many partitions at once. Due times and leases are judged by the server's clock (`TIME` in Lua).
"""
from __future__ import annotations

import logging
import zlib
from collections import defaultdict
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from engine.keys import Keys, PartitionKeys
from engine.models import MonitorSpec, spec_decoder, spec_encoder
from engine.queue import history as job_history
from engine.queue.scripts import Scripts
from engine.settings import DragonflySettings, QueueSettings

log = logging.getLogger("engine.queue")

ACK, RETRY, RELEASE = "A", "R", "L"


@dataclass(slots=True)
class Job:
    id: int
    partition: int
    tick_ms: int      # the tick this run belongs to (lateness = start - tick)
    attempt: int      # 1 = first try
    token: str        # lease token; finishing needs it to match
    claimed_ms: int   # server clock at claim
    spec: MonitorSpec


@dataclass(slots=True)
class Finish:
    job: Job
    action: str       # ACK | RETRY | RELEASE
    delay_ms: int
    detail: bytes     # history detail (engine.queue.history: checked / released)


def connect(settings: DragonflySettings) -> aioredis.Redis:
    return aioredis.Redis(host=settings.host, port=settings.port, db=settings.db,
                          password=settings.password or None, ssl=settings.tls,
                          socket_connect_timeout=5, socket_keepalive=True,
                          health_check_interval=30)


def phase_ms(monitor_id: int, interval_ms: int) -> int:
    """Stable spread of first due times over the interval (so 100k monitors don't fire together)."""
    return zlib.crc32(monitor_id.to_bytes(8, "little")) % interval_ms


class Queue:
    def __init__(self, redis: aioredis.Redis, prefix: str, settings: QueueSettings,
                 strict_scripts: bool = False) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(prefix, settings.partitions)
        self.scripts = Scripts(strict=strict_scripts)

    async def prepare(self) -> None:
        """Load scripts; refuse a queue built with another partition count."""
        await self.scripts.ensure_loaded(self.redis)
        layout = str(len(self.keys.partitions))
        old = await self.redis.set(self.keys.layout, layout, nx=True, get=True)
        if old is not None and old.decode() != layout:
            from engine.errors import SettingsError
            raise SettingsError(f"invalid setting queue.partitions: the queue in Dragonfly was built "
                                f"with {old.decode()} partitions, not {layout} (drop it or keep the old count)")

    async def _run(self, calls: list[tuple]) -> list:
        """Run script calls [(script, keys, argv)] in one non-transactional pipeline."""
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=False)
            for script, keys, argv in calls:
                pipe.execute_command("EVALSHA", *script.args(keys, argv))
            try:
                return await pipe.execute()
            except NoScriptError:
                if attempt == 2:
                    raise
                await self.scripts.ensure_loaded(self.redis)  # the server restarted and lost them
            except ResponseError as exc:
                if "NOSCRIPT" not in str(exc) or attempt == 2:
                    raise
                await self.scripts.ensure_loaded(self.redis)
        raise AssertionError("unreachable")

    # -- workers -------------------------------------------------------------------------------
    async def claim(self, wants: list[tuple[int, int]], worker: str) -> tuple[int, dict[int, int], list[Job]]:
        """Claim up to n jobs from each (partition, n). Returns (server now ms,
        {partition: its next due ms or -1}, jobs)."""
        calls = [(self.scripts.claim, self.keys.partitions[p].core, [n, worker]) for p, n in wants]
        replies = await self._run(calls)
        jobs: list[Job] = []
        now = 0
        next_due: dict[int, int] = {}
        for (p, _), reply in zip(wants, replies):
            now = max(now, int(reply[0]))
            next_due[p] = int(reply[1])
            for i in range(2, len(reply), 5):
                jobs.append(Job(int(reply[i]), p, int(reply[i + 1]), int(reply[i + 2]),
                                reply[i + 3].decode(), now, spec_decoder.decode(reply[i + 4])))
        return now, next_due, jobs

    async def finish(self, items: list[Finish]) -> tuple[int, int, dict[int, int]]:
        """Ack / retry / release a batch in one round trip.
        Returns (done, stale, {partition: its next due ms or -1})."""
        by_part: dict[int, list[Finish]] = defaultdict(list)
        for item in items:
            by_part[item.job.partition].append(item)
        keep, ttl = self.settings.history_len, self.settings.history_ttl_s
        calls = []
        for p, group in by_part.items():
            pk = self.keys.partitions[p]
            keys = pk.core[:4] + [pk.history(f.job.id) for f in group]
            argv: list = [keep, ttl]
            argv += [b"%d|%s|%d|%s|%s" % (f.job.id, f.action.encode(), f.delay_ms, f.job.token.encode(),
                                         f.detail) for f in group]
            calls.append((self.scripts.finish, keys, argv))
        done = stale = 0
        next_due = {}
        for p, (d, s, nd) in zip(by_part, await self._run(calls)):
            done += d
            stale += s
            next_due[p] = int(nd)
        return done, stale, next_due

    async def recover(self, worker: str = "", limit: int = 1000) -> int:
        """Requeue expired leases (or every lease of a dead `worker`); record it in job history."""
        calls = [(self.scripts.recover, pk.core[:4], [limit, worker]) for pk in self.keys.partitions]
        replies = await self._run(calls)
        pipe = self.redis.pipeline(transaction=False)
        count = 0
        what = "released: worker %s died" % worker if worker else "stalled: lease expired"
        for pk, reply in zip(self.keys.partitions, replies):
            for i in range(0, len(reply), 2):
                count += 1
                key = pk.history(reply[i].decode())
                if self.settings.history_len:
                    pipe.lpush(key, job_history.recovered(reply[i + 1], what))
                    pipe.ltrim(key, 0, self.settings.history_len - 1)
                    pipe.expire(key, self.settings.history_ttl_s)
        if count:
            await pipe.execute()
        return count

    # -- scheduler -----------------------------------------------------------------------------
    async def upsert(self, specs: list[MonitorSpec], batch: int = 500) -> tuple[int, int]:
        """Add/update monitors. Returns (added, rescheduled)."""
        by_part: dict[int, list] = defaultdict(list)
        for spec in specs:
            interval = spec.interval_s * 1000
            lease = spec.timeout_ms + self.settings.lease_margin_ms
            by_part[spec.id % len(self.keys.partitions)].append(
                (spec.id, interval, lease, phase_ms(spec.id, interval), spec_encoder.encode(spec)))
        calls = []
        for p, rows in by_part.items():
            for i in range(0, len(rows), batch):
                argv = [v for row in rows[i:i + batch] for v in row]
                calls.append((self.scripts.upsert, self.keys.partitions[p].core, argv))
        added = moved = 0
        for i in range(0, len(calls), 64):
            for a, m in await self._run(calls[i:i + 64]):
                added += a
                moved += m
        return added, moved

    async def remove(self, ids: list[int]) -> int:
        by_part: dict[int, list[int]] = defaultdict(list)
        for mid in ids:
            by_part[mid % len(self.keys.partitions)].append(mid)
        calls = [(self.scripts.remove, self.keys.partitions[p].core, group) for p, group in by_part.items()]
        return sum(await self._run(calls)) if calls else 0

    async def partition_ids(self, pk: PartitionKeys) -> set[int]:
        """Every monitor id one partition holds (HKEYS of its conf: for full reconciles only)."""
        return {int(i) for i in await self.redis.hkeys(pk.conf)}

    async def monitor_ids(self) -> set[int]:
        """Every monitor id in the queue (one round trip for all partitions)."""
        pipe = self.redis.pipeline(transaction=False)
        for pk in self.keys.partitions:
            pipe.hkeys(pk.conf)
        return {int(i) for part in await pipe.execute() for i in part}

    async def renew_lock(self, key: str, holder: str, ttl_ms: int) -> bool:
        """Extend a lease lock only if `holder` still holds it."""
        (renewed,) = await self._run([(self.scripts.all["renewLock"], [key], [holder, ttl_ms])])
        return bool(renewed)

    # -- operators -----------------------------------------------------------------------------
    async def depth(self) -> dict[str, list[int]]:
        """Per partition: waiting jobs, due now (backlog), leased (in flight)."""
        now = await self.server_time_ms()
        pipe = self.redis.pipeline(transaction=False)
        for pk in self.keys.partitions:
            pipe.zcard(pk.due)
            pipe.zcount(pk.due, "-inf", now)
            pipe.zcard(pk.active)
        r = await pipe.execute()
        return {"waiting": r[0::3], "due": r[1::3], "in_flight": r[2::3]}

    async def history(self, monitor_id: int) -> list[dict]:
        key = self.keys.partition_of(monitor_id).history(monitor_id)
        raw = await self.redis.lrange(key, 0, max(self.settings.history_len, 1) - 1)
        return [job_history.decode(e) for e in raw]

    async def server_time_ms(self) -> int:
        sec, usec = await self.redis.time()
        return sec * 1000 + usec // 1000
