"""The scenarios. Each returns a list of summary dicts (one per run it makes) and keeps its raw
figures (series for the plots) under the `_raw` key.

steady  offered load below capacity (5,000/s and 10,000/s): precision
max     ramp the offered load; the highest rate held (>= 95 % achieved, p99 lateness < 1 s)
slow    targets answering in 200-2,000 ms: thousands of probes in flight
storm   half the targets failing: every failing tick retried 3 times (1 s, 2 s, 4 s)
tls     HTTPS only, certificates verified (the fleet's trustme CA via SSL_CERT_FILE)
scale   1,000,000 monitors in the queue: sync time, Redis memory, claim cost vs 10,000
crash   kill -9 a worker mid-run: the gap it causes
"""
from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time

from bench.engine import EngineProcess
from bench.window import Context, Plan, Sampler, http_rows, measure, run_window, slow_path, summarize


def _q(ctx: Context, quick: float, full: float) -> float:
    return quick if ctx.quick else full


# -- steady ----------------------------------------------------------------------------------------
async def steady(ctx: Context) -> list[dict]:
    out = []
    for rate in ctx.rates or (5000, 10000):
        plan = Plan("steady", f"steady-{rate}", rate, warm=_q(ctx, 5, 10), duration=int(_q(ctx, 15, 60)),
                    monitors=rate, interval=1)
        res = await run_window(ctx, plan, http_rows(ctx, rate, 1))
        out.append({**summarize(ctx, res), "_raw": res})
    return out


# -- max -------------------------------------------------------------------------------------------
LADDER = (2000, 4000, 6000, 8000, 10000, 12000, 14000, 16000, 18000, 20000)


def _held(s: dict) -> bool:
    return s["achieved"] >= 0.95 * s["offered"] and s["lateness_p99_ms"] < 1000


async def max_rate(ctx: Context) -> list[dict]:
    """One engine run; each step enables more 1 s monitors (the scheduler's incremental sync picks
    them up), settles, and measures a window. After the first step not held, one step half-way back
    (by disabling monitors) refines the answer."""
    st = ctx.stores
    top = LADDER[-1]
    settle, dur = _q(ctx, 3, 5), int(_q(ctx, 6, 15))
    plan = Plan("max", "max", LADDER[0], warm=settle, duration=dur, monitors=top, interval=1)
    probe = f"bench-{ctx.run_id}-max"
    await st.reset()
    await st.seed(http_rows(ctx, top, 1, enabled=lambda mid: mid <= LADDER[0]))
    env = st.engine_env(probe, ctx.out / "spool", {"SSL_CERT_FILE": ctx.ca_bundle, **ctx.engine_env})
    engine = EngineProcess(env, ctx.workers, ctx.out / "engine-max.log", gc_threshold=ctx.gc_threshold)
    engine.start()
    sampler = Sampler(ctx, plan, engine)
    sampling = asyncio.create_task(sampler.run())
    steps: list[dict] = []
    try:
        await engine.wait_for(r"queue ready", 60)
        await engine.wait_for(r"worker \d+ is ready", 30, count=ctx.workers)
        rates = list(LADDER)
        held_rate, failed_rate, refined = 0, 0, False
        while rates:
            rate = rates.pop(0)
            if rate > held_rate:
                await st.enable_up_to(rate)
            else:
                pg = await st.connect_pg()
                await pg.execute("UPDATE monitors SET enabled = false WHERE id > $1 AND enabled", rate)
            plan.offered, plan.monitors, plan.label = rate, rate, f"max-{rate}"
            sampler.phase = "settling"
            await asyncio.sleep(settle + 1.5)  # scheduler sync (1 s) + a full interval
            if rate < failed_rate:
                # Stepping back down: let the failed step's backlog drain first, or it would be
                # counted as this step's throughput.
                deadline = time.time() + 15
                while time.time() < deadline and (await st.queue_now())["backlog"] > rate / 20:
                    await asyncio.sleep(0.5)
                await asyncio.sleep(1)
            m = await measure(ctx, plan, engine, sampler)
            fig = await st.window(probe, m["t0"], m["t1"])
            ticks = await st.ticks(probe, m["t0"], m["t1"], rate)
            s = summarize(ctx, {"plan": plan, "figures": fig, "window": m, "ticks": ticks,
                                "peak_in_flight": sampler.peak_in_flight, "peak_leased": sampler.peak_leased,
                                "rss_kb": sampler.rss_kb})
            s["held"] = _held(s)
            s["_t0"], s["_t1"] = m["t0"], m["t1"]
            steps.append(s)
            ctx.progress(f"[max] offered {rate:,}/s: achieved {s['achieved']:,.0f}/s p99 "
                         f"{s['lateness_p99_ms']:.0f} ms -> {'held' if s['held'] else 'NOT held'}", final=True)
            sampler.peak_in_flight = sampler.peak_leased = 0
            if s["held"]:
                held_rate = max(held_rate, rate)
            else:
                failed_rate = rate
                if refined or not held_rate:
                    break
                refined = True
                mid = (held_rate + failed_rate) // 2 // 500 * 500
                rates = [mid] if held_rate < mid < failed_rate else []
    finally:
        sampler.track_memory()
        sampling.cancel()
        await engine.stop()
    series = await st.series(probe)
    best = max((s for s in steps if s["held"]), key=lambda s: s["offered"], default=None)
    ceiling = ctx.ceilings.get("http", {}).get("rate")
    summary = {"scenario": "max", "run": "max", "workers": ctx.workers,
               "max_held": best["offered"] if best else 0,
               "achieved_at_max": best["achieved"] if best else 0,
               "lateness_p99_ms_at_max": best["lateness_p99_ms"] if best else None,
               "first_not_held": failed_rate or None,
               "achieved_at_first_not_held": next((s["achieved"] for s in steps if not s["held"]), None),
               "peak_achieved": max((s["achieved"] for s in steps), default=0),
               "ceiling": ceiling,
               "ratio_ceiling": round(best["achieved"] / ceiling, 3) if best and ceiling else None,
               "cpu_per_1k_workers_at_max": best["cpu_per_1k_workers"] if best else None,
               "steps": " ".join(f"{s['offered']:.0f}:{s['achieved']:.0f}/{s['lateness_p99_ms']:.0f}ms"
                                 for s in steps)}
    return [{**summary, "_raw": {"steps": steps, "series": series, "plan": plan}}]


# -- slow, storm, tls -------------------------------------------------------------------------------
async def slow(ctx: Context) -> list[dict]:
    rate, interval = int(_q(ctx, 2000, 3000)), 5
    n = rate * interval
    plan = Plan("slow", "slow", rate, warm=_q(ctx, 8, 15), duration=int(_q(ctx, 15, 60)), monitors=n,
                interval=interval, concurrency=4000)
    res = await run_window(ctx, plan, http_rows(ctx, n, interval, path=slow_path(200, 2000)))
    return [{**summarize(ctx, res, latency_ms="200-2000", concurrency=4000), "_raw": res}]


async def storm(ctx: Context) -> list[dict]:
    """Half the monitors answer 503: each failing tick is 4 attempts (retries 3, backoff 1, 2, 4 s)."""
    n, interval = int(_q(ctx, 10000, 20000)), 10
    plan = Plan("storm", "storm", n / interval, warm=_q(ctx, 12, 20), duration=int(_q(ctx, 20, 60)),
                monitors=n, interval=interval)
    res = await run_window(ctx, plan, http_rows(ctx, n, interval, path=lambda mid: "s/503" if mid % 2 else ""))
    st = ctx.stores
    m = res["window"]
    where = (f"probe = '{res['probe']}' AND ts >= toDateTime({m['t0']}) AND ts < toDateTime({m['t1']})")
    retry = await st.ch_rows(f"SELECT attempt AS a, quantileExact(0.5)(lateness_ms) AS p50, "
                             f"quantileExact(0.99)(lateness_ms) AS p99 FROM ue_bench.check_results "
                             f"WHERE {where} GROUP BY a ORDER BY a")
    pg = await st.connect_pg()
    status = {r["status"]: r["n"] for r in await pg.fetch(
        "SELECT status, count(*) AS n FROM monitor_status GROUP BY status")}
    # Attempt k of a failing tick is due 1, 3, 7 s after the tick (plus the earlier attempts' time).
    backoff = {2: 1000, 3: 3000, 4: 7000}
    extra = {"attempts": "/".join(str(res["figures"]["attempts"].get(a, 0)) for a in (1, 2, 3, 4)),
             "retry_late_p99_ms": "/".join(f"{r['p99'] - backoff[r['a']]:.0f}" for r in retry if r["a"] in backoff),
             "status_down": status.get("down", 0), "status_up": status.get("up", 0),
             "status_pending": status.get("pending", 0)}
    return [{**summarize(ctx, res, **extra), "_raw": res}]


async def tls(ctx: Context) -> list[dict]:
    rate = ctx.rates[0] if ctx.rates else 2000
    plan = Plan("tls", "tls", rate, warm=_q(ctx, 5, 10), duration=int(_q(ctx, 15, 60)), kind="https",
                monitors=rate, interval=1)
    res = await run_window(ctx, plan, http_rows(ctx, rate, 1, kind="https"))
    return [{**summarize(ctx, res, verify_tls="on" if ctx.verify_tls else "off"), "_raw": res}]


async def tcp(ctx: Context) -> list[dict]:
    from bench.window import tcp_rows
    rate = 5000
    plan = Plan("tcp", "tcp", rate, warm=_q(ctx, 5, 10), duration=int(_q(ctx, 15, 60)), monitors=rate,
                interval=1)
    res = await run_window(ctx, plan, tcp_rows(ctx, rate, 1))
    return [{**summarize(ctx, res), "_raw": res}]


# -- crash -----------------------------------------------------------------------------------------
async def crash(ctx: Context) -> list[dict]:
    rate = ctx.rates[0] if ctx.rates else 5000
    dur = int(_q(ctx, 20, 40))
    plan = Plan("crash", "crash", rate, warm=_q(ctx, 5, 10), duration=dur, monitors=rate, interval=1)
    state: dict = {}

    async def kill_one(t0: int, t1: int) -> dict:
        async def later() -> None:
            await asyncio.sleep(max(0.0, t0 + dur / 2 - time.time()))
            engine: EngineProcess = state["engine"]
            victims = engine.worker_pids()
            if not victims:
                return
            ready_before = engine.output().count("is ready (id")
            state["killed_pid"], state["killed_at"] = victims[0], time.time()
            os.kill(victims[0], signal.SIGKILL)
            while time.time() < t1 + 10:
                if "respawned_at" not in state and set(engine.worker_pids()) - set(victims):
                    state["respawned_at"] = time.time()
                if engine.output().count("is ready (id") > ready_before:
                    state["ready_at"] = time.time()
                    break
                await asyncio.sleep(0.05)
        state["task"] = asyncio.create_task(later())
        return {}

    async def remember(engine: EngineProcess) -> None:
        state["engine"] = engine

    res = await run_window(ctx, plan, http_rows(ctx, rate, 1), during=kill_one, after_ready=remember)
    task = state.get("task")
    if task:
        await asyncio.wait_for(task, 30)
    killed = state.get("killed_at", 0.0)
    per_s = {r["t"]: r["n1"] for r in res["series"]}
    m = res["window"]
    # Judged against what the engine held before the kill (it may run below the offered rate).
    before = [per_s.get(t, 0) for t in range(m["t0"], int(killed))] or [rate]
    base = statistics.median(before)
    gap = sum(1 for t in range(int(killed), m["t1"]) if per_s.get(t, 0) < 0.5 * base)
    recovery = None
    for t in range(int(killed) + 1, m["t1"]):
        if per_s.get(t, 0) >= 0.9 * base and per_s.get(t + 1, 0) >= 0.9 * base:
            recovery = round(t - killed, 1)
            break
    lost = round(sum(max(0.0, base - per_s.get(t, 0)) for t in range(int(killed), min(int(killed) + 10, m["t1"]))))
    extra = {"killed_pid": state.get("killed_pid"), "killed_at": round(killed, 2), "held_before_kill": base,
             "respawn_s": round(state["respawned_at"] - killed, 2) if "respawned_at" in state else None,
             "worker_ready_s": round(state["ready_at"] - killed, 2) if "ready_at" in state else None,
             "gap_s_below_half": gap, "recovery_s": recovery, "checks_short_10s_after_kill": lost}
    return [{**summarize(ctx, res, **extra), "_raw": res}]


# -- scale -----------------------------------------------------------------------------------------
async def claim_round(ctx: Context, queue, wants: list, due: int) -> dict | None:
    """Claim every due job of `queue` with the engine's own Queue.claim, then ack them all (next
    tick 1 s later). None if fewer than 90 % of the due set came back (not all due yet). Redis'
    own time (INFO commandstats) is taken around the claims only."""
    from engine.queue import ACK, Finish
    from engine.queue import history as job_history

    jobs_all, t_claim, calls = [], 0.0, 0
    rd0 = await ctx.stores.redis_stats()
    while True:
        t = time.perf_counter()
        _, _, jobs = await queue.claim(wants, "bench/claim")
        t_claim += time.perf_counter() - t
        calls += 1
        jobs_all += jobs
        if len(jobs) < 10:
            break
    rd1 = await ctx.stores.redis_stats()
    await queue.finish([Finish(j, ACK, 0, job_history.checked(j.claimed_ms, 1.0, 0.0, "up", "", ""))
                        for j in jobs_all])
    if len(jobs_all) < due * 0.9:
        return None
    return {"us_per_job": t_claim / len(jobs_all) * 1e6, "ms_per_call": t_claim / calls * 1e3,
            "server_us_per_job": (rd1["evalsha_usec"] - rd0["evalsha_usec"]) / len(jobs_all)}


async def claim_costs(ctx: Context, queues: dict, rounds: int, due: int) -> dict:
    """Claim cost of several queues (same Redis db, different prefixes), rounds interleaved so
    that whatever else the machine does weighs on each alike. Client wall time per claimed job
    (median over rounds) and Redis' own time per job (INFO commandstats; server-wide, so other
    clients of the same server count too)."""
    from engine.settings import QueueSettings

    qs = QueueSettings()
    wants = [(p, min(qs.claim_batch, 1000 // qs.partitions)) for p in range(qs.partitions)]
    got: dict[str, list] = {name: [] for name in queues}
    for _ in range(rounds):
        await asyncio.sleep(1.05)  # every job of the due sets is due again
        for name, queue in queues.items():
            r = await claim_round(ctx, queue, wants, due)
            if r:
                got[name].append(r)
    out = {}
    for name in queues:
        rs = got[name]
        out[name] = {"claim_us_per_job": round(statistics.median(r["us_per_job"] for r in rs), 2) if rs else None,
                     "claim_ms_per_round_trip": round(statistics.median(r["ms_per_call"] for r in rs), 2) if rs else None,
                     "claim_server_us_per_job": round(statistics.median(r["server_us_per_job"] for r in rs), 2) if rs else None,
                     "rounds": len(rs)}
    return out


async def scale(ctx: Context) -> list[dict]:
    """1,000,000 monitors: a due set of 5,000 at 1 s, the rest at 1 day (phase-spread, so ~11/s
    come due). The engine does the full sync (timed by its own 'queue ready' line) and runs a
    window; then claim cost is measured on that queue and on a 10,000-monitor queue with the same
    due set (its own key prefix in the same Redis db), rounds interleaved."""
    from engine.models import MonitorSpec
    from engine.queue import Queue
    from engine.settings import QueueSettings

    st = ctx.stores
    big, due, far = 1_000_000, 5000, 86400
    rounds = int(_q(ctx, 6, 12))
    urls = ctx.fleet.cfg.urls("http")

    await st.reset()
    mem0 = (await st.redis_stats())["used_memory"]
    rows = http_rows(ctx, big, 1)
    rows = [r if r[0] <= due else r[:5] + (far,) + r[6:] for r in rows]
    offered = due + (big - due) / far
    plan = Plan("scale", "scale", offered, warm=_q(ctx, 5, 10), duration=int(_q(ctx, 10, 30)),
                monitors=big, interval=1, tick_ids=due, ready_timeout=600)
    res = await run_window(ctx, plan, rows)
    del rows
    used = (await st.redis_stats())["used_memory"] - mem0
    big_mem = await st.queue_memory()

    small_queue = Queue(st.redis, "ue10k", QueueSettings())
    await small_queue.prepare()
    await small_queue.upsert([MonitorSpec(id=i, type="http", interval_s=1 if i <= due else far,
                                          url=urls[i % len(urls)] + "/") for i in range(1, 10_001)])
    small_mem = await st.queue_memory("ue10k")
    big_queue = Queue(st.redis, "ue", QueueSettings())
    await big_queue.prepare()
    costs = await claim_costs(ctx, {"10k": small_queue, "1m": big_queue}, rounds, due)
    small, large = costs["10k"], costs["1m"]
    ratio = (large["claim_us_per_job"] / small["claim_us_per_job"]
             if large["claim_us_per_job"] and small["claim_us_per_job"] else None)
    sratio = (large["claim_server_us_per_job"] / small["claim_server_us_per_job"]
              if large["claim_server_us_per_job"] and small["claim_server_us_per_job"] else None)
    extra = {"seed_s": res["seed_s"], "sync_s": res["sync_s"], "synced": res["synced"],
             "full_syncs": res["full_syncs"], "scheduler_lease_lost": res["lease_lost"],
             "redis_queue_mb": round(big_mem / 2**20, 1), "redis_used_mb_delta": round(used / 2**20, 1),
             "redis_bytes_per_monitor": round(big_mem / big),
             "queue_10k_mb": round(small_mem / 2**20, 2),
             "claim_us_per_job_10k": small["claim_us_per_job"], "claim_us_per_job_1m": large["claim_us_per_job"],
             "claim_server_us_per_job_10k": small["claim_server_us_per_job"],
             "claim_server_us_per_job_1m": large["claim_server_us_per_job"],
             "claim_ms_per_round_trip_1m": large["claim_ms_per_round_trip"],
             "claim_rounds": min(small["rounds"], large["rounds"]),
             "claim_cost_ratio_1m_10k": round(ratio, 3) if ratio else None,
             "claim_server_ratio_1m_10k": round(sratio, 3) if sratio else None}
    return [{**summarize(ctx, res, **extra), "_raw": res}]


SCENARIOS = {"steady": steady, "max": max_rate, "slow": slow, "storm": storm, "tls": tls,
             "scale": scale, "crash": crash, "tcp": tcp}
QUICK = ("steady", "max", "slow", "storm", "tls", "scale", "crash")
