"""Prometheus metrics: one `/metrics` per probe host, aggregated over the worker processes.

prometheus_client's multiprocess mode does the aggregation: every process writes its values to
mmap files in one folder (PROMETHEUS_MULTIPROC_DIR, made by the supervisor before it forks), and
the supervisor's scrape merges them. Counter files of dead workers stay, so totals survive worker
restarts; a dead worker's live gauges are dropped (`worker_exited` -> `mark_process_dead`).

The per-check hook is the hot path (up to ~10,000 calls/s per worker): a multiprocess write costs
~2 µs per value (lock, pid check, mmap pack), and one check touches five values. So `check_done`
only bumps plain ints in this process (~0.5 µs) and a task on the worker's loop folds them into the
shared files every FLUSH_S, and once more when the loop shuts down. A worker killed with SIGKILL
loses at most its last FLUSH_S of counts (its ClickHouse buffer is lost the same way).

Queue depth, due backlog and in-flight per partition are asked of Dragonfly at scrape time by a
collector in the supervisor (cluster-wide figures: every probe host reports the same; use max()).
All hooks are no-ops until set up, and when `engine.metrics_port` is 0.
"""
from __future__ import annotations

import asyncio
import atexit
import logging
import os
import shutil
import tempfile
from bisect import bisect_left

log = logging.getLogger("engine.metrics")

FLUSH_S = 1.0
SCRAPE_TIMEOUT_S = 2.0
KINDS = ("http", "tcp")
OUTCOMES = ("up", "down", "retry")
SINKS = ("clickhouse", "postgres", "dragonfly", "claim")
INF = float("inf")
DURATION_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, INF)
LATENESS_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, INF)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000, 50000, INF)

_m = None                 # _Metrics once set up (supervisor: before fork; inherited by workers)
_flusher = None           # the worker's flush task (kept referenced)
_server = None            # the supervisor's /metrics server (its socket is closed in workers)


class _Histo:
    """A histogram kept as plain ints in this process until the next fold."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0


class _Local:
    """Per-process pending deltas of the hot-path metrics, keyed by plain strings."""

    def __init__(self) -> None:
        self.checks = {k: dict.fromkeys(OUTCOMES, 0) for k in KINDS}
        self.duration = {k: _Histo(DURATION_BUCKETS) for k in KINDS}
        self.lateness = _Histo(LATENESS_BUCKETS)
        self.in_flight = 0


_local = _Local()


def check_done(kind: str, outcome: str, duration_s: float, lateness_s: float) -> None:
    """One attempt finished: kind 'http'|'tcp', outcome 'up'|'down'|'retry'."""
    try:
        _local.checks[kind][outcome] += 1
        h = _local.duration[kind]
    except KeyError:  # an unknown kind/outcome is a caller bug; never break a check for it
        return
    h.counts[bisect_left(h.bounds, duration_s)] += 1
    h.sum += duration_s
    h = _local.lateness
    h.counts[bisect_left(h.bounds, lateness_s)] += 1
    h.sum += lateness_s
    if _local.in_flight > 0:
        _local.in_flight -= 1  # in_flight() sets the exact figure at the next claim


def in_flight(n: int) -> None:
    """Probes in flight in this worker now."""
    _local.in_flight = n


def batch_written(sink: str, size: int) -> None:
    """A batch reached its sink: 'clickhouse' rows per INSERT, 'postgres' statuses per flush,
    'dragonfly' jobs per ack round trip, 'claim' jobs per claim round trip."""
    if _m is not None:
        child = _m.batch_children.get(sink)
        if child is None:
            child = _m.batch_children[sink] = _m.batch.labels(sink)
        child.observe(size)


def flush_error(sink: str) -> None:
    """A sink's write failed (it is retried)."""
    if _m is not None:
        _m.flush_errors.labels(sink).inc()


def spooled(rows: int) -> None:
    """Rows currently held in this worker's memory buffer or spool while ClickHouse is down."""
    if _m is not None:
        _m.buffered.set(rows)


def results_dropped(rows: int) -> None:
    """Spooled results dropped to keep the spool within its limits (a long ClickHouse outage)."""
    if _m is not None:
        _m.dropped.inc(rows)


def results_rejected(rows: int) -> None:
    """Results in a segment ClickHouse refused as malformed (set aside as `.rejected`)."""
    if _m is not None:
        _m.rejected.inc(rows)


def worker_restarted() -> None:
    """The supervisor replaced a dead or silent worker."""
    if _m is not None:
        _m.restarts.inc()


def worker_started(index: int) -> None:
    """Called once in each worker process after fork (inside its event loop, when there is one)."""
    global _local, _flusher
    _local = _Local()  # nothing the parent counted belongs to this process
    if _m is None:
        return
    if _server is not None:
        _server.socket.close()  # inherited across fork; only the supervisor answers scrapes
    _m.in_flight.set(0)
    _m.buffered.set(0)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    _flusher = loop.create_task(_flush_loop(), name="metrics")


async def _flush_loop() -> None:
    try:
        while True:
            await asyncio.sleep(FLUSH_S)
            fold()
    finally:  # cancelled when the worker's loop shuts down: count the last checks too
        fold()


def fold() -> None:
    """Move this process's pending hot-path deltas into the shared multiprocess files."""
    global _local
    if _m is None:
        return
    pending, _local = _local, _Local()
    _local.in_flight = pending.in_flight
    for kind, outcomes in pending.checks.items():
        for outcome, n in outcomes.items():
            if n:
                _m.check_children[kind, outcome].inc(n)
    for kind, h in pending.duration.items():
        _fold_histogram(_m.duration_children[kind], h)
    _fold_histogram(_m.lateness, pending.lateness)
    _m.in_flight.set(pending.in_flight)


def _fold_histogram(target, h: _Histo) -> None:
    # prometheus_client has no public "observe n values" call: add to the bucket and sum values
    # directly (these attributes have been stable since 0.4; test_metrics checks the result).
    if not any(h.counts):
        return
    for i, n in enumerate(h.counts):
        if n:
            target._buckets[i].inc(n)
    target._sum.inc(h.sum)


class _Metrics:
    """The metric families, made once in the supervisor (before fork) in multiprocess mode."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.checks = Counter("uptime_checks_total", "Check attempts finished, by monitor type and "
                              "outcome (retry = failed, will be retried)", ["type", "outcome"])
        self.duration = Histogram("uptime_check_duration_seconds", "Check attempt duration",
                                  ["type"], buckets=DURATION_BUCKETS)
        self.lateness = Histogram("uptime_schedule_lateness_seconds",
                                  "Check start minus the tick it belonged to", buckets=LATENESS_BUCKETS)
        self.in_flight = Gauge("uptime_probes_in_flight", "Probes in flight (live workers)",
                               multiprocess_mode="livesum")
        self.batch = Histogram("uptime_sink_batch_size", "Items per batch written, by sink "
                               "(clickhouse rows, postgres statuses, dragonfly acks, claim jobs)",
                               ["sink"], buckets=BATCH_BUCKETS)
        self.flush_errors = Counter("uptime_sink_flush_errors_total", "Failed sink writes (retried)",
                                    ["sink"])
        self.buffered = Gauge("uptime_results_buffered", "Results held in memory or spool while "
                              "ClickHouse is unreachable (live workers)", multiprocess_mode="livesum")
        self.dropped = Counter("uptime_results_dropped_total", "Spooled results dropped to keep the "
                               "spool within sinks.spool_max_mb / spool_min_free_mb")
        self.rejected = Counter("uptime_results_rejected_total", "Results in segments ClickHouse "
                                "refused as malformed, set aside in the spool as *.rejected")
        self.restarts = Counter("uptime_worker_restarts_total", "Workers replaced after dying or "
                                "going silent")
        # Labelled children made once: the hot path never calls .labels().
        self.check_children = {(k, o): self.checks.labels(k, o) for k in KINDS for o in OUTCOMES}
        self.duration_children = {k: self.duration.labels(k) for k in KINDS}
        self.batch_children = {s: self.batch.labels(s) for s in SINKS}
        for s in SINKS:
            self.flush_errors.labels(s)


class QueueCollector:
    """Asks Dragonfly for the queue's depth at scrape time (bounded by SCRAPE_TIMEOUT_S)."""

    def __init__(self, settings) -> None:
        self.settings = settings

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("uptime_queue_up", "1 if Dragonfly answered this scrape")
        try:
            depth = asyncio.run(asyncio.wait_for(self._depth(), SCRAPE_TIMEOUT_S))
        except Exception as exc:  # noqa: BLE001 - a scrape must answer even when Dragonfly does not
            log.debug("queue depth unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for name, key, doc in (
                ("uptime_queue_depth", "waiting", "Monitors scheduled in each partition"),
                ("uptime_queue_due_backlog", "due", "Jobs due now and not yet claimed"),
                ("uptime_queue_in_flight", "in_flight", "Jobs claimed and leased")):
            fam = GaugeMetricFamily(name, doc + " (cluster-wide)", labels=["partition"])
            for p, v in enumerate(depth[key]):
                fam.add_metric([str(p)], v)
            yield fam

    async def _depth(self) -> dict[str, list[int]]:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        from engine.queue import Queue, connect

        redis = connect(self.settings.dragonfly)
        redis.set_retry(Retry(NoBackoff(), 1))  # the scrape is bounded; no backoff inside it
        try:
            return await Queue(redis, self.settings.dragonfly.prefix, self.settings.queue).depth()
        finally:
            await redis.aclose()


def supervisor_started(settings) -> None:
    """Called in the supervisor before it forks any worker (set up aggregation, serve /metrics on
    settings.engine.metrics_port unless it is 0)."""
    global _m, _server
    port = settings.engine.metrics_port
    if not port or _m is not None:
        return
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # an operator may pick it (e.g. tmpfs)
    if path:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):  # files of a previous run would be summed into this one
            if name.endswith(".db"):
                os.unlink(os.path.join(path, name))
    else:
        path = tempfile.mkdtemp(prefix="uptime-engine-metrics-")
        atexit.register(shutil.rmtree, path, True)  # workers leave by os._exit: only we run it
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path

    from prometheus_client import CollectorRegistry, start_http_server, values
    from prometheus_client.multiprocess import MultiProcessCollector

    # Every value made from here on (here and in forked workers) lives in the shared files, even if
    # something imported prometheus_client before the folder was chosen.
    values.ValueClass = values.MultiProcessValue()
    _m = _Metrics()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    registry.register(QueueCollector(settings))
    try:
        _server, _ = start_http_server(port, registry=registry)
    except OSError as exc:
        log.error("cannot serve /metrics on port %d (%s); checks go on without it", port, exc)
        return
    log.info("serving Prometheus metrics on :%d/metrics", port)


def worker_exited(pid: int) -> None:
    """A worker process is gone (dead or retired); called by the supervisor."""
    if _m is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
