"""One worker process: claims due jobs in batches, runs probes with bounded concurrency, and feeds
the results batcher (ClickHouse), the status coalescer (PostgreSQL) and the batched finisher
(acks/retries back to Dragonfly). Runs on uvloop; made after fork by `serve()`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from engine import metrics
from engine.claiming import ClaimPlan
from engine.probes import Prober
from engine.queue import ACK, RELEASE, RETRY, Finish, Job, Queue, connect
from engine.queue import history as job_history
from engine.scheduler import Scheduler
from engine.settings import Settings
from engine.stats import Rolling
from engine.sinks.clickhouse import ClickHouse, ResultRow, ResultsSink
from engine.sinks.postgres import StatusSink

log = logging.getLogger("engine.worker")


class Finisher:
    """Batches acks / retries / releases into one Dragonfly round trip per `ack_interval_ms`."""

    def __init__(self, queue: Queue, interval_ms: int, before_ack=None, learn=None) -> None:
        self.queue = queue
        self.learn = learn            # told each partition's next due time after a finish
        self.before_ack = before_ack  # writes the batch's results ahead of its acks
        self.interval = interval_ms / 1000
        self.items: list[Finish] = []
        self.healthy = True
        self.stale = 0
        self.batches = 0

    def add(self, item: Finish) -> None:
        self.items.append(item)

    async def flush(self) -> bool:
        if not self.items:
            return True
        batch, self.items = self.items, []
        if self.before_ack is not None:
            try:
                self.before_ack()
            except OSError as exc:  # the disk failed: results stay in memory, jobs still move on
                log.error("cannot write results ahead of their acks: %s", exc)
        try:
            _, stale, next_due = await self.queue.finish(batch)
        except asyncio.CancelledError:
            self.items[:0] = batch  # maybe not sent: keep it (a repeat is fenced by the token)
            raise
        except (RedisError, OSError) as exc:
            self.items[:0] = batch
            metrics.flush_error("dragonfly")
            if self.healthy:
                log.warning("acks are being kept until Dragonfly answers: %s", exc)
                self.healthy = False
            return False
        self.stale += stale
        self.batches += 1
        if self.learn is not None:
            for p, due in next_due.items():
                self.learn(p, due)
        metrics.batch_written("dragonfly", len(batch))
        if not self.healthy:
            log.warning("Dragonfly answers again; %d kept acks written", len(batch))
            self.healthy = True
        return True

    async def run(self, stopping: asyncio.Event) -> None:
        delay = self.interval
        while not stopping.is_set():
            await asyncio.sleep(delay)
            delay = self.interval if await self.flush() else min(max(delay, 0.1) * 2, 5.0)


class Worker:
    def __init__(self, settings: Settings, index: int, worker_id: str) -> None:
        self.settings = settings
        self.index = index
        self.id = worker_id
        self.probe = settings.probe_id
        self.stopping = asyncio.Event()
        self.inflight: dict[int, tuple[asyncio.Task, Job]] = {}
        self.slot_free = asyncio.Event()
        self.clock_offset = 0.0   # server clock minus local clock, seconds
        self.plan: ClaimPlan | None = None
        self.checks = 0
        self.rolling = Rolling()
        self.started = time.time()

    async def start(self) -> None:
        s = self.settings
        self.redis = connect(s.dragonfly)
        self.queue = Queue(self.redis, s.dragonfly.prefix, s.queue)
        await self.queue.prepare()
        self.prober = Prober(s.probes)
        await self.prober.start()
        self.ch = ClickHouse(s.clickhouse)
        self.results = ResultsSink(self.ch, s.sinks, f"{self.probe}-w{self.index}")
        await self.results.start()
        self.statuses = StatusSink(s.postgres.dsn, s.sinks)
        self.finisher = Finisher(self.queue, s.queue.ack_interval_ms, self.results.journal, self._learn)
        self.scheduler = Scheduler(s, self.queue, self.id)

    async def run(self) -> None:
        """Run until `stopping` is set, then drain: finish in-flight checks within the grace
        period, release what did not finish, and flush every batch. `start()` comes first."""
        sink_stop = asyncio.Event()
        upkeep = [
            asyncio.create_task(self.results.run(sink_stop), name="results"),
            asyncio.create_task(self.statuses.run(sink_stop), name="statuses"),
            asyncio.create_task(self.finisher.run(sink_stop), name="finisher"),
            asyncio.create_task(self._recover_loop(), name="recover"),
            asyncio.create_task(self.scheduler.run(self.stopping), name="scheduler"),
            asyncio.create_task(self._report_loop(), name="report"),
        ]
        log.info("worker %d is ready (id %s, concurrency %d)", self.index, self.id,
                 self.settings.engine.concurrency)
        try:
            await self._claim_loop()
        finally:
            await self._drain()
            sink_stop.set()
            # Sinks end their current round (a write in progress is not cut in half); the rest stop.
            sinks, others = upkeep[:3], upkeep[3:]
            for task in others:
                task.cancel()
            _, late = await asyncio.wait(sinks, timeout=5)
            for task in late:
                task.cancel()
            await asyncio.gather(*upkeep, return_exceptions=True)
            await self._final_flush()
            await self._close()

    # -- claiming ----------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        q = self.settings.queue
        plan = self.plan = ClaimPlan(q.partitions, q.claim_batch, q.poll_ms, q.claim_min_ms, self.index)
        backoff = 0.0
        while not self.stopping.is_set():
            free = self.settings.engine.concurrency - len(self.inflight)
            if free <= 0:
                self.slot_free.clear()
                await self._wait(self.slot_free.wait(), q.poll_ms / 1000)
                continue
            wants = plan.wants(free)
            if not wants:
                await self._wait(self.stopping.wait(), plan.sleep_s())
                continue
            try:
                sent = time.time()
                now_ms, next_due, jobs = await self.queue.claim(wants, self.id)
            except (RedisError, OSError) as exc:
                backoff = min(max(backoff * 2, 0.2), 5.0)
                if backoff == 0.2:
                    log.warning("cannot claim jobs, retrying with backoff: %s", exc)
                plan.last_poll = 0.0  # ask every partition once it answers again
                await self._wait(self.stopping.wait(), backoff)
                continue
            if backoff:
                log.warning("claiming jobs again")
                backoff = 0.0
            got: dict[int, int] = {}
            for job in jobs:
                got[job.partition] = got.get(job.partition, 0) + 1
                self.inflight[job.id] = (asyncio.create_task(self._run_job(job)), job)
            plan.claimed(wants, next_due, got, now_ms, sent, time.time())
            self.clock_offset = plan.offset_ms / 1000  # judge lateness by the server's clock
            if jobs:
                metrics.batch_written("claim", len(jobs))
                metrics.in_flight(len(self.inflight))
            await self._wait(self.stopping.wait(), plan.sleep_s())

    def _learn(self, partition: int, next_due: int) -> None:
        if self.plan is not None:
            self.plan.learn(partition, next_due)

    @staticmethod
    async def _wait(awaitable, timeout: float) -> None:
        try:
            await asyncio.wait_for(awaitable, timeout)
        except asyncio.TimeoutError:
            pass

    # -- one job -------------------------------------------------------------------------------
    async def _run_job(self, job: Job) -> None:
        spec = job.spec
        started = time.time() + self.clock_offset
        try:
            log.debug("Processing monitor check job %d (attempt %d)", job.id, job.attempt)
            result = await self.prober.check(spec)
            self.checks += 1
            lateness = started * 1000 - job.tick_ms
            self.rolling.observe(lateness)
            final = result.ok or job.attempt > spec.retries
            self.results.add(ResultRow(
                started, job.id, self.probe, job.attempt, int(result.ok), result.status_code,
                result.latency_ms, result.dns_ms, result.connect_ms, result.tls_ms, result.ttfb_ms,
                result.error_kind, result.error, job.tick_ms / 1000, lateness,
                result.cert_expiry_days, self.id))
            if final:
                self.statuses.record(job.id, result.ok, started, result.latency_ms,
                                     result.status_code, result.error)
                action, delay = ACK, 0
            else:
                action = RETRY
                delay = min(self.settings.queue.backoff_ms * 2 ** (job.attempt - 1),
                            self.settings.queue.backoff_max_ms)
            outcome = ("up" if result.ok else "down") if final else "retry"
            metrics.check_done(spec.type, outcome, result.latency_ms / 1000, lateness / 1000)
            detail = job_history.checked(int(started * 1000), result.latency_ms, lateness, outcome,
                                         result.error_kind, result.error)
            self.finisher.add(Finish(job, action, delay, detail))
        except Exception as exc:  # noqa: BLE001 - a probe bug must not lose the job or the worker
            log.error("check of monitor %d failed inside the engine: %r; released", job.id, exc)
            detail = job_history.released(f"engine error: {exc!r}")
            self.finisher.add(Finish(job, RELEASE, self.settings.queue.backoff_ms, detail))
        except asyncio.CancelledError:
            # Shutdown past the grace period: the job goes back to the queue to run again now.
            self.finisher.add(Finish(job, RELEASE, 0, job_history.released("worker shutting down")))
            raise
        finally:
            self.inflight.pop(job.id, None)
            self.slot_free.set()

    # -- upkeep ------------------------------------------------------------------------------
    async def _recover_loop(self) -> None:
        """Requeue jobs whose lease expired (their worker died or hung)."""
        while not self.stopping.is_set():
            await self._wait(self.stopping.wait(), 1.0 + (self.index % 4) * 0.25)
            try:
                n = await self.queue.recover()
                if n:
                    log.warning("recovered %d jobs whose lease expired", n)
            except (RedisError, OSError) as exc:
                log.debug("lease recovery failed: %s", exc)

    async def _report_loop(self) -> None:
        """Publish this worker's figures for `status` every second (and remove them at exit)."""
        key = self.queue.keys.workers
        try:
            while not self.stopping.is_set():
                info = {"probe": self.probe, "index": self.index, "pid": os.getpid(), "ts": time.time(),
                        "started": self.started,
                        "checks": self.checks, "checks_1m": self.rolling.last_minute(),
                        "in_flight": len(self.inflight),
                        **self.rolling.figures(),
                        "sinks": {"clickhouse": self.results.healthy, "postgres": self.statuses.healthy,
                                  "dragonfly": self.finisher.healthy},
                        "buffered": {"results": self.results.pending(),
                                     "statuses": len(self.statuses.pending)},
                        "scheduler": self.scheduler.leader}
                try:
                    await self.redis.hset(key, self.id, orjson.dumps(info))
                except (RedisError, OSError):
                    pass
                await self._wait(self.stopping.wait(), 1.0)
        finally:
            try:
                await self.redis.hdel(key, self.id)
            except (RedisError, OSError):
                pass

    async def _drain(self) -> None:
        if self.inflight:
            log.info("worker %d: waiting for %d in-flight checks", self.index, len(self.inflight))
            tasks = [t for t, _ in self.inflight.values()]
            _, pending = await asyncio.wait(tasks, timeout=self.settings.engine.grace_ms / 1000)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                log.warning("worker %d: released %d checks that outlived the grace period",
                            self.index, len(pending))

    async def _final_flush(self) -> None:
        """Flush every batch once more; what cannot be written is kept (spool) or released."""
        await self.finisher.flush()
        if not await self.statuses.flush():
            log.error("worker %d: %d status updates could not be written to PostgreSQL",
                      self.index, len(self.statuses.pending))
        if not await self.results.flush():
            log.warning("worker %d: %d results stay in the spool until ClickHouse answers",
                        self.index, self.results.pending())

    async def _close(self) -> None:
        await self.scheduler.close()
        await self.prober.close()
        await self.ch.close()
        self.results.close()
        await self.statuses.close()
        await self.redis.aclose()


async def _heartbeat(path: str, stopping: asyncio.Event) -> None:
    """Touch the supervisor's heartbeat file while this loop is responsive."""
    with open(path, "wb") as f:
        f.write(b"ready")
    while not stopping.is_set():
        os.utime(path)
        try:
            await asyncio.wait_for(stopping.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


def serve(settings: Settings, index: int, worker_id: str, heartbeat: str | None = None) -> int:
    """Entry point of a worker process (after fork): its own loop, connections and signals.
    Returns the exit code: 0, or BOOT_ERROR when it cannot start (bad settings, services down)."""
    import uvloop

    from engine.errors import EngineError
    from engine.supervisor import BOOT_ERROR

    async def main() -> int:
        metrics.worker_started(index)
        worker = Worker(settings, index, worker_id)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stopping.set)
        try:
            await worker.start()
        except (EngineError, RedisError, OSError) as exc:
            reason = f"worker {index} cannot start: {exc}"
            log.error("%s", reason)
            if heartbeat:
                with open(heartbeat, "w") as f:
                    f.write(reason)
            return BOOT_ERROR
        beat = asyncio.create_task(_heartbeat(heartbeat, worker.stopping)) if heartbeat else None
        await worker.run()
        if beat:
            await beat
        return 0

    return uvloop.run(main())
