"""The ceiling: wrk (C, from Debian) against the same target fleet, a new connection per request.

Several wrk processes, each on its own fleet address, so no single address:port runs out of
ephemeral ports. The figure is what this machine manages when the client costs almost nothing:
the engine's checks/s is reported as a ratio of it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

from bench import procs
from bench.targets import FleetConfig


def find_wrk() -> str | None:
    """wrk's path; installs the Debian package when running as root and it is missing."""
    path = shutil.which("wrk")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env,
                          capture_output=True).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, capture_output=True)
        path = shutil.which("wrk")
    return path


def measure(cfg: FleetConfig, kind: str, seconds: int, fleet_pids: list[int],
            clients: int = 4, connections: int = 16) -> dict:
    """Run `clients` wrk processes (1 thread, `connections` each) for `seconds`. Blocking."""
    wrk = find_wrk()
    if wrk is None:
        return {"kind": kind, "error": "wrk not installed (apt-get install wrk)"}
    urls = cfg.urls(kind)[:clients]
    meter = procs.Meter([procs.Group("targets", fleet_pids)])
    meter.mark()
    started = time.monotonic()
    runs = [subprocess.Popen([wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "-H", "Connection: close",
                              url + "/"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for url in urls]
    outputs, wrk_cpu = [], 0.0
    for p in runs:
        out = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wrk_cpu += usage.ru_utime + usage.ru_stime
        outputs.append(out)
    wall = time.monotonic() - started
    cpu = meter.read()
    requests = errors = non2xx = 0
    for out in outputs:
        m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
        requests += int(m.group(1)) if m else 0
        e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        errors += sum(int(x) for x in e.groups()) if e else 0
        n = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        non2xx += int(n.group(1)) if n else 0
    rate = requests / seconds
    per_k = 1000 / requests if requests else 0.0
    return {"kind": kind, "rate": round(rate, 1), "requests": requests, "seconds": seconds,
            "clients": clients, "connections": clients * connections, "socket_errors": errors,
            "non_2xx": non2xx, "wall": round(wall, 2),
            "cpu_s_per_1k": {"targets": round(cpu["targets"] * per_k, 4), "wrk": round(wrk_cpu * per_k, 4)},
            "cpu_share": {"targets": round(cpu["targets"] / max(cpu["machine_busy"], 1e-9), 3),
                          "wrk": round(wrk_cpu / max(cpu["machine_busy"], 1e-9), 3)},
            "machine_busy": round(cpu["machine_busy"] / max(cpu["machine_total"], 1e-9), 3)}
