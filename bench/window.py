"""One measured run of the engine: start it, warm up, measure a steady window, stop, read back.

Figures come from what landed in ClickHouse (rows of this run's probe id whose attempt started in
the window) and from the processes (/proc CPU per group over the same window, RSS of the workers),
with Redis sampled every half second for in-flight probes and the due backlog.
"""
from __future__ import annotations

import asyncio
import math
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from bench import procs
from bench.engine import EngineProcess
from bench.stores import Stores
from bench.targets import Fleet

GROUPS = ("workers", "supervisor", "redis", "postgres", "clickhouse", "targets")


@dataclass
class Context:
    """What every scenario shares: the stores, the fleet, the run's settings and figures."""
    stores: Stores
    fleet: Fleet
    out: Path
    quick: bool
    workers: int
    run_id: str
    ca_bundle: str = ""
    ceilings: dict = field(default_factory=dict)
    service_pids: dict = field(default_factory=dict)   # redis/postgres/clickhouse root pids
    progress_tty: bool = field(default_factory=lambda: sys.stderr.isatty())
    profile: bool = False                               # py-spy one worker in each window
    gc_threshold: int | None = None                     # experiment knob (see bench/engine.py)
    engine_env: dict = field(default_factory=dict)      # extra engine environment (--engine-env)
    rates: list = field(default_factory=list)           # --rate overrides
    verify_tls: bool = True                             # monitors' verify_tls (--no-verify-tls)

    def progress(self, text: str, final: bool = False) -> None:
        if self.progress_tty:
            sys.stderr.write("\r\x1b[2K" + text + ("\n" if final else ""))
        elif final or int(time.time()) % 5 == 0:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def groups(self, engine: EngineProcess) -> list[procs.Group]:
        sp = self.service_pids
        return [procs.Group("workers", [engine.pid], "children"),
                procs.Group("supervisor", [engine.pid], "self"),
                procs.Group("redis", [sp["redis"]] if sp.get("redis") else [], "self"),
                procs.Group("postgres", [sp["postgres"]] if sp.get("postgres") else [], "tree"),
                procs.Group("clickhouse", [sp["clickhouse"]] if sp.get("clickhouse") else [], "self"),
                procs.Group("targets", self.fleet.pids, "tree")]


# -- monitors ------------------------------------------------------------------------------------
def http_rows(ctx: Context, count: int, interval: int, kind: str = "http", start_id: int = 1,
              path: Callable[[int], str] | None = None, enabled: Callable[[int], bool] | None = None,
              timeout_ms: int = 10_000, retries: int = 3) -> list[tuple]:
    """COPY rows for `count` HTTP(S) monitors spread round-robin over the fleet's endpoints."""
    urls = ctx.fleet.cfg.urls(kind)
    rows = []
    for mid in range(start_id, start_id + count):
        url = urls[mid % len(urls)] + "/" + (path(mid) if path else "")
        rows.append((mid, "http", url, None, None, interval, timeout_ms, retries,
                     enabled(mid) if enabled else True, ctx.verify_tls))
    return rows


def tcp_rows(ctx: Context, count: int, interval: int, start_id: int = 1) -> list[tuple]:
    eps = ctx.fleet.cfg.endpoints("tcp")
    return [(mid, "tcp", None, eps[mid % len(eps)][0], eps[mid % len(eps)][1], interval, 10_000, 3, True, True)
            for mid in range(start_id, start_id + count)]


def slow_path(lo_ms: int, hi_ms: int, seed: int = 7) -> Callable[[int], str]:
    rng = random.Random(seed)
    cache: dict[int, str] = {}

    def path(mid: int) -> str:
        if mid not in cache:
            cache[mid] = f"d/{rng.randint(lo_ms, hi_ms)}"
        return cache[mid]
    return path


# -- the run ---------------------------------------------------------------------------------------
@dataclass
class Plan:
    name: str                    # summary 'scenario=' value
    label: str                   # file-safe label of this run (probe id suffix)
    offered: float               # attempts/s the monitors ask for (first attempts)
    warm: float                  # seconds after 'queue ready' before the window
    duration: int                # window length, whole seconds
    kind: str = "http"           # which ceiling applies
    concurrency: int | None = None
    env: dict = field(default_factory=dict)
    monitors: int = 0
    interval: int = 1
    tick_ids: int | None = None  # ticks are counted for monitors 1..tick_ids (all by default)
    ready_timeout: float = 60.0


class Sampler:
    """Samples Redis (in flight, backlog, the workers' counters) and /proc every 0.5 s, drives the
    live progress line, and keeps the peaks."""

    def __init__(self, ctx: Context, plan: Plan, engine: EngineProcess) -> None:
        self.ctx, self.plan, self.engine = ctx, plan, engine
        self.timeline: list[dict] = []
        self.peak_in_flight = 0
        self.peak_leased = 0
        self.rss_kb: dict[int, int] = {}
        self.phase = "starting"
        self.window_end = 0.0
        self._seen: list[tuple[float, int]] = []
        self.groups = ctx.groups(engine)
        self._cpu_last: tuple[float, dict[str, float]] | None = None

    def track_memory(self) -> None:
        for pid in self.engine.worker_pids():
            rss, hwm = procs.memory_kb(pid)
            self.rss_kb[pid] = max(self.rss_kb.get(pid, 0), rss, hwm)

    async def run(self) -> None:
        while True:
            try:
                q = await self.ctx.stores.queue_now()
            except Exception:  # noqa: BLE001 - a missed sample is not worth stopping the run
                q = {}
            now = time.time()
            self.track_memory()
            cpu_now = {g.name: g.cpu() for g in self.groups}
            if q:
                self.peak_in_flight = max(self.peak_in_flight, q["in_flight"])
                self.peak_leased = max(self.peak_leased, q["leased"])
                # Workers publish their counters once a second: rate over the last ~3 s.
                self._seen = [x for x in self._seen if now - x[0] < 3.2] + [(now, q["checks"])]
                first = self._seen[0]
                rate = (q["checks"] - first[1]) / (now - first[0]) if now - first[0] > 1 else 0.0
                share = {}
                if self._cpu_last:
                    dt = now - self._cpu_last[0]
                    share = {k: (v - self._cpu_last[1].get(k, 0.0)) / dt for k, v in cpu_now.items()}
                self.timeline.append({"t": round(now, 2), "checks_per_s": round(rate, 1), **q,
                                      "cpu": {k: round(v, 3) for k, v in share.items()}})
                left = f" {max(0, self.window_end - now):4.0f}s left" if self.window_end else ""
                cpu = " ".join(f"{k[:3]} {100 * v:3.0f}%" for k, v in share.items())
                self.ctx.progress(
                    f"[{self.plan.label}] {self.phase}{left}  offered {self.plan.offered:,.0f}/s  "
                    f"checks {rate:8,.0f}/s  in-flight {q['in_flight']:5d}  backlog {q['backlog']:6d}  "
                    f"p99 {q['p99']:6.0f} ms  cpu: {cpu}")
            self._cpu_last = (now, cpu_now)
            await asyncio.sleep(0.5)


async def sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.time()))


async def measure(ctx: Context, plan: Plan, engine: EngineProcess, sampler: Sampler,
                  during: Callable[[int, int], Awaitable[dict]] | None = None) -> dict:
    """Measure one window [t0, t0 + duration) on a running engine (whole seconds, aligned)."""
    st = ctx.stores
    t0 = math.ceil(time.time() + 0.05)
    await sleep_until(t0)
    meter = procs.Meter(sampler.groups)
    meter.mark()
    ch0, pg0, rd0 = await st.ch_counters(), await st.pg_counters(), await st.redis_stats()
    t1 = t0 + plan.duration
    sampler.phase, sampler.window_end = "measuring", t1
    spy, raw = None, ctx.out / f"profile-{plan.label}.raw"
    if ctx.profile and engine.worker_pids():
        from bench import profile
        spy = profile.record(engine.worker_pids()[0], plan.duration, raw)
    extra = await during(t0, t1) if during else {}
    await sleep_until(t1)
    cpu = meter.read()
    if spy is not None:
        from bench import profile
        await asyncio.to_thread(spy.wait, 30)
        if raw.exists():
            text = profile.summarize(raw)
            raw.with_suffix(".txt").write_text(text)
            extra["profile"] = str(raw.with_suffix(".txt"))
    pg1, rd1 = await st.pg_counters(), await st.redis_stats()
    sampler.phase, sampler.window_end = "flushing", 0.0
    await asyncio.sleep(2.5)                 # one flush interval (1 s) and then some
    ch1 = await st.ch_counters()
    return {"t0": t0, "t1": t1, "cpu": cpu, "ch": (ch0, ch1), "pg": (pg0, pg1), "redis": (rd0, rd1),
            **extra}


async def run_window(ctx: Context, plan: Plan, rows: list[tuple] | None,
                     during: Callable[[int, int], Awaitable[dict]] | None = None,
                     after_ready: Callable[[EngineProcess], Awaitable[None]] | None = None) -> dict:
    """Reset, seed, start the engine, warm up, measure, stop; return the scenario's figures."""
    st = ctx.stores
    probe = f"bench-{ctx.run_id}-{plan.label}"
    ctx.progress(f"[{plan.label}] seeding {plan.monitors:,} monitors")
    await st.reset()
    seed_s = await st.seed(rows) if rows else 0.0
    env = st.engine_env(probe, ctx.out / "spool", {"SSL_CERT_FILE": ctx.ca_bundle, **plan.env,
                                                              **ctx.engine_env})
    engine = EngineProcess(env, ctx.workers, ctx.out / f"engine-{plan.label}.log", plan.concurrency,
                           ctx.gc_threshold)
    engine.start()
    sampler = Sampler(ctx, plan, engine)
    sampling = asyncio.create_task(sampler.run())
    try:
        ready = await engine.wait_for(r"queue ready[^\n]*", plan.ready_timeout)
        await engine.wait_for(r"worker \d+ is ready", 30, count=ctx.workers)
        sampler.phase = "warming"
        if after_ready:
            await after_ready(engine)
        await asyncio.sleep(plan.warm)
        if "scheduler lost its lease" in engine.output() and not ctx.quick:
            # A full sync longer than the scheduler's lock lease lets another worker take over and
            # sync again: measure after that one, not during it (the summary says it happened).
            # Quick runs measure during it: what an operator sees in the first minutes.
            sampler.phase = "second full sync"
            await engine.wait_for(r"queue ready", plan.ready_timeout, count=2)
            await asyncio.sleep(plan.warm)
        m = await measure(ctx, plan, engine, sampler, during)
    finally:
        sampler.track_memory()
        sampling.cancel()
        code = await engine.stop()
    ctx.progress(f"[{plan.label}] reading results", final=False)
    fig = await st.window(probe, m["t0"], m["t1"])
    ticks = await st.ticks(probe, m["t0"], m["t1"], plan.tick_ids)
    series = await st.series(probe)
    syncs = len(re.findall(r"queue ready", engine.output()))
    detail = re.search(r"full sync of (\d+) enabled monitors .* in ([\d.]+) s", ready.group(0))
    return {"plan": plan, "probe": probe, "seed_s": round(seed_s, 2),
            "sync_s": float(detail.group(2)) if detail else None,
            "full_syncs": syncs, "lease_lost": "scheduler lost its lease" in engine.output(),
            "synced": int(detail.group(1)) if detail else None, "exit_code": code, "window": m, "figures": fig,
            "ticks": ticks, "series": series, "timeline": sampler.timeline,
            "peak_in_flight": sampler.peak_in_flight, "peak_leased": sampler.peak_leased,
            "rss_kb": sampler.rss_kb}


def summarize(ctx: Context, res: dict, **extra) -> dict:
    """The key=value figures of one run (see docs/BENCHMARKS.md for what each means)."""
    plan: Plan = res["plan"]
    fig, m = res["figures"], res["window"]
    d = plan.duration
    cpu = m["cpu"]
    achieved = fig["rows"] / d
    per_k = 1000 / fig["rows"] if fig["rows"] else 0.0
    (rows0, blocks0), (rows1, blocks1) = m["ch"]
    pg0, pg1 = m["pg"]
    rd0, rd1 = m["redis"]
    xacts = pg1["xact"] - pg0["xact"]
    status_stmts = max(pg1["status_si"] - pg0["status_si"], pg1["status_su"] - pg0["status_su"])
    status_rows = pg1["status_upd"] - pg0["status_upd"] + pg1["status_ins"] - pg0["status_ins"]
    ceiling = ctx.ceilings.get(plan.kind, {}).get("rate")
    expected_ticks = plan.monitors * d // plan.interval if plan.tick_ids is None else plan.tick_ids * d // plan.interval
    out = {
        "scenario": plan.name, "run": plan.label, "workers": ctx.workers,
        "engine_exit": res.get("exit_code"),
        "monitors": plan.monitors, "offered": round(plan.offered, 1), "window_s": d,
        "achieved": round(achieved, 1), "first_attempts_per_s": round(fig["first_attempts"] / d, 1),
        "ceiling": ceiling, "ratio_ceiling": round(achieved / ceiling, 3) if ceiling else None,
        "lateness_p50_ms": round(fig["lateness_p50_ms"], 1),
        "lateness_p99_ms": round(fig["lateness_p99_ms"], 1),
        "lateness_max_ms": round(fig["lateness_max_ms"], 1),
        "latency_avg_ms": round(fig["latency_avg_ms"], 2),
        "failed": fig["failed"],
        "missed_ticks": max(0, expected_ticks - res["ticks"]["ticks_done"]),
        "dup_ticks": res["ticks"]["duplicates"],
        "in_flight_peak": res["peak_in_flight"], "leased_peak": res["peak_leased"],
        "rss_worker_mb_peak": round(max(res["rss_kb"].values() or [0]) / 1024, 1),
        "ch_rows_per_insert": round((rows1 - rows0) / (blocks1 - blocks0), 1) if blocks1 > blocks0 else None,
        "ch_inserts_per_s": round((blocks1 - blocks0) / d, 2),
        "pg_xacts_per_s": round(xacts / d, 2),
        "pg_status_stmts_per_s": round(status_stmts / d, 2),
        "pg_status_rows_per_stmt": round(status_rows / status_stmts, 1) if status_stmts else None,
        "redis_evalsha_per_s": round((rd1["evalsha_calls"] - rd0["evalsha_calls"]) / d, 1),
        "redis_us_per_check": round((rd1["evalsha_usec"] - rd0["evalsha_usec"]) / max(fig["rows"], 1), 2),
    }
    for g in GROUPS:
        out[f"cpu_per_1k_{g}"] = round(cpu.get(g, 0.0) * per_k, 3)
    out["cpu_per_1k_bench"] = round(cpu["bench"] * per_k, 3)
    other = cpu["machine_busy"] - cpu["bench"] - sum(cpu.get(g, 0.0) for g in GROUPS)
    out["cpu_per_1k_other"] = round(max(0.0, other) * per_k, 3)  # kernel softirq, other users
    out["cpu_per_1k_total"] = round(cpu["machine_busy"] * per_k, 3)
    out["cpu_busy"] = round(cpu["machine_busy"] / max(cpu["machine_total"], 1e-9), 3)
    out["cpu_share_targets"] = round(cpu.get("targets", 0.0) / max(cpu["machine_busy"], 1e-9), 3)
    if m.get("profile"):
        out["profile"] = Path(m["profile"]).name
    if fig["errors"]:
        out["errors"] = ",".join(f"{k or 'none'}:{v}" for k, v in fig["errors"].items())
    out.update(extra)
    return out
