"""Prometheus metrics (interface; the implementation lands with the operator-tooling issue).

Workers call these hooks; they must stay O(1) and cheap on the per-check path.
"""
from __future__ import annotations


def worker_started(index: int) -> None:
    """Called once in each worker process after fork."""


def check_done(kind: str, outcome: str, duration_s: float, lateness_s: float) -> None:
    """One attempt finished: kind 'http'|'tcp', outcome 'up'|'down'|'retry'."""


def in_flight(n: int) -> None:
    """Probes in flight in this worker now."""


def batch_written(sink: str, size: int) -> None:
    """A batch reached its sink: 'clickhouse' rows per INSERT, 'postgres' statuses per flush,
    'dragonfly' jobs per ack round trip, 'claim' jobs per claim round trip."""


def flush_error(sink: str) -> None:
    """A sink's write failed (it is retried)."""


def spooled(rows: int) -> None:
    """Rows currently held in this worker's memory buffer or spool while ClickHouse is down."""


def worker_restarted() -> None:
    """The supervisor replaced a dead or silent worker."""


def supervisor_started(settings) -> None:
    """Called in the supervisor before it forks any worker (set up aggregation, serve /metrics on
    settings.engine.metrics_port unless it is 0)."""


def worker_exited(pid: int) -> None:
    """A worker process is gone (dead or retired); called by the supervisor."""
