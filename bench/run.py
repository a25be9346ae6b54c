"""The bench: load-test the whole engine on this machine and report it against the wrk ceiling.

    python -m bench.run --quick                 # every scenario, short (a few minutes); `make bench`
    python -m bench.run                         # every scenario, longer windows
    python -m bench.run --scenario steady       # one (repeatable: --scenario tls --scenario crash)

It starts the local services if needed (scripts/services.sh), makes its own databases (Redis db 14,
PostgreSQL and ClickHouse `ue_bench`), runs `uptime-engine migrate`, starts the target fleet
(bench/targets.py), measures the wrk ceiling, then runs each scenario against a real
`uptime-engine run --workers N`. While running it shows a live progress line (stderr); at the end
it prints one `key=value` line per run (stdout), and writes bench/out/bench-<time>.json and a PNG
per run. Heavy: hold the shared CPU lock when others use the machine (`flock /tmp/ue-cpu.lock ...`).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import ceiling, procs, report
from bench.scenarios import QUICK, SCENARIOS
from bench.stores import OUT, ROOT, Stores, services_env
from bench.targets import Fleet, FleetConfig, ca_bundle
from bench.window import Context


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short windows (a few minutes in all)")
    p.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                   help="run only this scenario (repeatable); default: all of " + ",".join(QUICK))
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="engine worker processes")
    p.add_argument("--fleet-procs", type=int, default=2, help="target fleet processes")
    p.add_argument("--addresses", type=int, default=16, help="fleet loopback addresses (127.0.0.10+)")
    p.add_argument("--ports", type=int, default=4, help="fleet ports per address and kind")
    p.add_argument("--ceiling-s", type=int, help="seconds of each wrk run (default 5 quick, 15 full)")
    p.add_argument("--no-ceiling", action="store_true", help="skip wrk")
    p.add_argument("--profile", action="store_true", help="py-spy one worker during each window "
                   "(bench/out/profile-<run>.txt)")
    p.add_argument("--engine-gc-threshold", type=int, metavar="N",
                   help="experiment: start the engine with gc.set_threshold(N, 20, 100) (no engine change)")
    p.add_argument("--engine-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the engine (repeatable), e.g. UE_QUEUE_HISTORY_LEN=0")
    p.add_argument("--rate", type=int, action="append", metavar="N",
                   help="offered checks/s for steady/tls/crash (repeatable; default per scenario)")
    p.add_argument("--no-verify-tls", action="store_true",
                   help="seed monitors with verify_tls=false (default: verified, fleet CA trusted)")
    p.add_argument("--out", default=str(OUT), help="output folder (default bench/out)")
    return p


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "engine"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty-engine" if dirty else "")
    except OSError:
        return "unknown"


async def main_async(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    names = args.scenario or list(QUICK)
    services = services_env()
    stores = Stores(services)
    await stores.open()
    stores.migrate()
    await stores.instrument()
    cfg = FleetConfig(addresses=args.addresses, ports=args.ports, procs=args.fleet_procs,
                      cert_dir=str(out / "certs"))
    fleet = Fleet(cfg).start()
    ctx = Context(stores, fleet, out, args.quick, args.workers, run_id.replace("-", ""),
                  ca_bundle=ca_bundle(cfg.cert_dir), profile=args.profile,
                  gc_threshold=args.engine_gc_threshold,
                  engine_env=dict(kv.split("=", 1) for kv in args.engine_env), rates=args.rate or [],
                  verify_tls=not args.no_verify_tls)
    ctx.service_pids = {name: procs.pid_listening(int(port)) for name, port in (
        ("redis", services["DRAGONFLY_PORT"]), ("postgres", services["POSTGRES_DSN"].rsplit(":", 1)[1].split("/")[0]),
        ("clickhouse", services["CLICKHOUSE_URL"].rsplit(":", 1)[1].split("/")[0]))}
    results: list[dict] = []
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": _commit(), "quick": args.quick,
            "engine_gc_threshold": args.engine_gc_threshold, "engine_env": args.engine_env,
            "workers": args.workers, "cpus": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.platform(), "fleet": {"addresses": cfg.addresses, "ports": cfg.ports,
                                                     "procs": cfg.procs, "endpoints_per_kind": len(cfg.endpoints("http"))}}
    try:
        if not args.no_ceiling:
            secs = args.ceiling_s or (5 if args.quick else 15)
            needs = {"https"} if names == ["tls"] else {"http", "https"} if "tls" in names else {"http"}
            for kind in sorted(needs):
                ctx.progress(f"[ceiling] wrk {kind}, new connection per request, {secs} s")
                c = await asyncio.to_thread(ceiling.measure, cfg, kind, secs, fleet.pids)
                ctx.ceilings[kind] = c
                ctx.progress(f"[ceiling] {kind}: {c.get('rate', 0):,.0f}/s", final=True)
        for name in names:
            ctx.progress(f"[{name}] starting", final=True)
            try:
                runs = await SCENARIOS[name](ctx)
            except Exception as exc:  # noqa: BLE001 - report it and go on with the next scenario
                ctx.progress(f"[{name}] failed: {type(exc).__name__}: {exc}", final=True)
                results.append({"scenario": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
                continue
            for r in runs:
                results.append(r)
                ctx.progress(report.line(r), final=True)
    finally:
        fleet.stop()
        await stores.close()
    meta["meta_ceilings"] = ctx.ceilings
    print()
    for kind, c in ctx.ceilings.items():
        print(report.line({"scenario": f"ceiling-{kind}", **{k: v for k, v in c.items()
                                                              if not isinstance(v, dict)},
                           **{f"cpu_per_1k_{k}": v for k, v in c.get("cpu_s_per_1k", {}).items()},
                           **{f"cpu_share_{k}": v for k, v in c.get("cpu_share", {}).items()}}))
    for r in results:
        print(report.line(r))
    ratios = [f"{r.get('run')}={r['ratio_ceiling']}" for r in results if r.get("ratio_ceiling")]
    if ratios:
        print("engine/ceiling: " + " ".join(ratios))
    path = out / f"bench-{run_id}.json"
    report.write_json(path, meta, results)
    shutil.copyfile(path, out / "latest.json")
    plots = [report.plot(out / f"{r.get('run', r['scenario'])}.png", r) for r in results if "_raw" in r]
    print(f"\nJSON: {path}" + (f"; plots: {', '.join(p.name for p in plots if p)} in {out}" if any(plots)
                              else " (no plots: pip install matplotlib)"))
    return 1 if any("error" in r for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
