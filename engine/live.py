"""`make run`: the engine with a live, compact view instead of a scrolling log.

    python -m engine.live [--demo] [--demo-port N] [--log FILE] [--refresh S] [-- run flags…]

Runs `uptime-engine run` as a child process whose log goes to a file, and redraws a few lines in
place (on a terminal; elsewhere it prints one line per refresh): checks/s, up/down counts, lateness,
backlog, in-flight and sink health, read from Dragonfly's worker heartbeats and from PostgreSQL.
With --demo it first serves a tiny target on loopback and adds the monitors of
config/demo-monitors.* that are not there yet ("${DEMO_URL}", "${DEMO_HOST}" and "${DEMO_PORT}" in
them name that target). Ctrl-C (SIGINT) or SIGTERM stops the engine cleanly (it finishes in-flight
checks and flushes), then the target; the exit code is the engine's.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from aiohttp import web

from engine import admin
from engine.errors import EngineError, InvalidMonitor
from engine.settings import Settings, load

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
DEMO_FORMATS = (".jsonl", ".ndjson", ".json", ".csv")


# -- the demo target ---------------------------------------------------------------------------
async def start_demo_target(port: int) -> web.AppRunner:
    """A few endpoints that behave like real services: healthy, slow, flaky, in maintenance."""
    async def ok(_):
        return web.Response(text="uptime-engine demo: all good")

    async def slow(_):
        await asyncio.sleep(random.uniform(0.2, 1.2))
        return web.Response(text="slow but fine")

    async def flaky(_):
        down = time.time() % 60 < 20
        return web.Response(status=503 if down else 200, text="flaky")

    async def status_page(_):
        return web.Response(text="<h1>Status</h1><p>all systems: green</p>", content_type="text/html")

    async def maintenance(_):
        return web.Response(status=503, text="down for maintenance")

    app = web.Application()
    app.add_routes([web.get("/ok", ok), web.get("/slow", slow), web.get("/flaky", flaky),
                    web.get("/status", status_page), web.get("/maintenance", maintenance)])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    except OSError as exc:
        await runner.cleanup()
        raise EngineError(f"demo target cannot listen on 127.0.0.1:{port}: {exc.strerror} "
                          f"(pick another with UE_DEMO_PORT)") from None
    return runner


def demo_rows(port: int, files: list[Path]) -> tuple[list[dict], list[str]]:
    """Validated monitor rows from the demo files, placeholders filled; and the bad rows' reasons."""
    subst = {"${DEMO_URL}": f"http://127.0.0.1:{port}", "${DEMO_HOST}": "127.0.0.1", "${DEMO_PORT}": str(port)}
    rows, bad = [], []
    for path in files:
        for line, raw in admin.read_rows(str(path)):
            for key, value in raw.items():
                if isinstance(value, str):
                    for name, real in subst.items():
                        value = value.replace(name, real)
                    raw[key] = value
            try:
                if "__error__" in raw:
                    raise InvalidMonitor(raw["__error__"])
                rows.append(admin.normalize(raw))
            except InvalidMonitor as exc:
                bad.append(f"{path.name}:{line}: {exc}")
    return rows, bad


async def add_demo_monitors(settings: Settings, port: int, config_dir: Path = CONFIG_DIR) -> str:
    """Add the demo monitors that are not there yet (same type and target). Returns a summary."""
    files = sorted(p for p in config_dir.glob("demo-monitors.*") if p.suffix in DEMO_FORMATS)
    rows, bad = demo_rows(port, files)
    conn = await admin.open_pg(settings)
    try:
        have = {(r["type"], r["url"], r["host"], r["port"]) for r in await conn.fetch(
            "SELECT type, url, host, port FROM monitors WHERE url = ANY($1::text[]) OR host = ANY($2::text[])",
            [r["url"] for r in rows if r["url"]], [r["host"] for r in rows if r["host"]])}
        new = [r for r in rows if (r["type"], r["url"], r["host"], r["port"]) not in have]
        await admin.import_monitors(conn, new)
    finally:
        await conn.close()
    note = f"demo: target on http://127.0.0.1:{port}; {len(new)} monitors added, " \
           f"{len(rows) - len(new)} already there (from {', '.join(p.name for p in files) or 'no file'})"
    return note + "".join(f"\n  skipped {b}" for b in bad)


# -- the engine as a child process -------------------------------------------------------------
def _die_with_parent() -> None:
    """In the child: get SIGTERM if this viewer dies, so no engine is left behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_engine(log_path: Path, run_args: list[str]) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n---- uptime-engine run started {time.strftime('%Y-%m-%d %H:%M:%S')} ----\n".encode())
        # A session of its own: a Ctrl-C reaches only this viewer, which stops the engine once.
        return subprocess.Popen([sys.executable, "-m", "engine", "run", *run_args], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)


# -- the view ----------------------------------------------------------------------------------
class View:
    def __init__(self, settings: Settings, log_path: Path, tty: bool) -> None:
        self.settings = settings
        self.log_path = log_path
        self.tty = tty
        self.started = time.monotonic()
        self.prev: dict[str, int] = {}       # worker id -> its checks total at the last frame
        self.prev_t = time.monotonic()
        self.rate = 0.0
        self.checks = 0
        self.counts: dict[str, int] = {}
        self.lines_drawn = 0
        self.log_pos = 0
        self.last_warning = ""
        self.note = ""

    async def sample(self, queue, pg) -> dict:
        heartbeats = await admin.read_workers(queue)
        st = await admin.collect_status(queue, heartbeats)
        workers, _ = heartbeats
        now = time.monotonic()
        fresh = 0
        for w in workers:
            if w.get("probe") != self.settings.probe_id:
                continue
            fresh += max(0, w.get("checks", 0) - self.prev.get(w["id"], w.get("checks", 0)))
            self.prev[w["id"]] = w.get("checks", 0)
        self.checks += fresh
        dt = max(now - self.prev_t, 1e-3)
        self.rate = fresh / dt if self.rate == 0 else 0.5 * self.rate + 0.5 * fresh / dt
        self.prev_t = now
        rows = await pg.fetch("SELECT coalesce(s.status, 'pending') AS status, count(*) AS n FROM monitors m "
                              "LEFT JOIN monitor_status s ON s.monitor_id = m.id WHERE m.enabled GROUP BY 1")
        self.counts = {r["status"]: r["n"] for r in rows}
        self._tail_log()
        host = st["probes"].get(self.settings.probe_id) or admin._rounded(admin._host())
        return {**host, "due_backlog": st["queue"]["due_backlog"]}

    def _tail_log(self) -> None:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_pos)
                chunk = f.read(1 << 20)
                self.log_pos = f.tell()
        except OSError:
            return
        for line in chunk.decode(errors="replace").splitlines():
            if " WARNING " in line or " ERROR " in line:
                self.last_warning = line.split("] ", 1)[-1][:100]

    def frame(self, h: dict | None, state: str) -> list[str]:
        up = int(time.monotonic() - self.started)
        c = self.counts
        head = f"uptime-engine · probe {self.settings.probe_id} · {state} · {up // 60}m{up % 60:02d}s"
        if h is None:
            return [head, "waiting for Dragonfly and PostgreSQL…"]
        sinks = " ".join(f"{k} {'ok' if v else 'DOWN'}" for k, v in sorted(h["sinks"].items())) or "-"
        lines = [head + f" · {h['workers']} workers" + ("   (Ctrl-C stops)" if state == "running" else ""),
                 f"checks/s {self.rate:7.1f}   checks {self.checks:<8}  up {c.get('up', 0)}  "
                 f"down {c.get('down', 0)}  pending {c.get('pending', 0)}",
                 f"lateness p50 {h['lateness_p50_ms']:.0f} ms  p99 {h['lateness_p99_ms']:.0f} ms   "
                 f"due backlog {h['due_backlog']}   in flight {h['in_flight']}",
                 f"sinks    {sinks}" + (f"   results kept: {h['buffered_results']}"
                                         if h["sinks"].get("clickhouse") is False else ""),
                 f"log      {self.log_path}" + (f"   last: {self.last_warning}" if self.last_warning else "")]
        if self.note:
            lines.append(self.note)
        return lines

    def line(self, h: dict | None, state: str) -> str:
        up = int(time.monotonic() - self.started)
        if h is None:
            return f"live: {up}s {state} waiting for services {self.note}".rstrip()
        c = self.counts
        return (f"live: {up}s {state} workers={h['workers']} checks/s={self.rate:.1f} checks={self.checks} "
                f"up={c.get('up', 0)} down={c.get('down', 0)} pending={c.get('pending', 0)} "
                f"p50={h['lateness_p50_ms']:.0f}ms p99={h['lateness_p99_ms']:.0f}ms "
                f"backlog={h['due_backlog']} in_flight={h['in_flight']}")

    def draw(self, h: dict | None, state: str) -> None:
        if not self.tty:
            print(self.line(h, state), flush=True)
            return
        lines = self.frame(h, state)
        up = f"\x1b[{self.lines_drawn}F" if self.lines_drawn else ""
        sys.stdout.write(up + "\x1b[J" + "\n".join(lines) + "\n")
        sys.stdout.flush()
        self.lines_drawn = len(lines)


async def watch(settings: Settings, engine: subprocess.Popen, view: View, refresh: float,
                grace_s: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    queue = pg = None
    h = None
    deadline = None
    while engine.poll() is None:
        if stop.is_set() and deadline is None:
            engine.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s + 20
        if deadline and time.monotonic() > deadline:
            engine.kill()
        try:
            queue = queue or await admin.open_queue(settings)
            pg = pg or await admin.open_pg(settings)
            new = await asyncio.wait_for(view.sample(queue, pg), 5)
            if new["workers"] or h is None or deadline is None:
                h = new  # while stopping, keep the last figures of the workers that left
        except Exception as exc:  # noqa: BLE001 - a service hiccup must not stop the view or the engine
            view.note = f"(figures unavailable: {str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__})"
            queue = pg = None
        else:
            view.note = ""
        view.draw(h, "stopping" if deadline else "running")
        try:
            await asyncio.wait_for(stop.wait() if deadline is None else asyncio.sleep(refresh), refresh)
        except asyncio.TimeoutError:
            pass
    code = engine.wait()
    view._tail_log()
    view.draw(h, f"stopped (exit {code})")
    if queue is not None:
        await queue.redis.aclose()
    if pg is not None:
        await pg.close()
    return code


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.live", description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", action="store_true", help="serve a demo target and add config/demo-monitors.*")
    p.add_argument("--demo-port", type=int, default=18080)
    p.add_argument("--log", default=".services/engine.log", help="where the engine's log goes")
    p.add_argument("--refresh", type=float, default=1.0, help="seconds between frames")
    p.add_argument("run_args", nargs="*", help="flags for `uptime-engine run` (after --)")
    return p


async def amain(args) -> int:
    settings = load()
    log_path = Path(args.log)
    target = None
    if args.demo:
        target = await start_demo_target(args.demo_port)
        print(await add_demo_monitors(settings, args.demo_port), flush=True)
    tty = sys.stdout.isatty()
    print(f"engine log: {log_path}" + (f"; metrics: http://127.0.0.1:{settings.engine.metrics_port}/metrics"
                                       if settings.engine.metrics_port else ""), flush=True)
    engine = start_engine(log_path, args.run_args)
    try:
        code = await watch(settings, engine, View(settings, log_path, tty), args.refresh,
                           settings.engine.grace_ms / 1000)
    finally:
        if engine.poll() is None:
            engine.kill()
        if target is not None:
            await target.cleanup()
    if code not in (0, -signal.SIGTERM):
        tail = log_path.read_text(errors="replace").splitlines()[-8:]
        print(f"uptime-engine exited with {code}; the end of {log_path}:", file=sys.stderr)
        print("\n".join("  " + line for line in tail), file=sys.stderr)
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(amain(args))
    except EngineError as exc:
        print(f"uptime-engine: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the engine started
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
