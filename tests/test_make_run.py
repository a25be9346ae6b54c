"""`make run` (scripts/run.sh): migrate, demo monitors, the engine with a live view; SIGINT stops
everything cleanly. And the .env file fills in only what the environment does not set."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time

import pytest

from tests.conftest import ROOT, TEST_DB, ch_rows
from tests.targets import free_port

LIVE = re.compile(r"^live: \d+s running workers=(\d+) checks/s=[\d.]+ checks=(\d+) up=(\d+) down=(\d+)")


def closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_make_run_shows_checks_and_stops_cleanly_on_sigint(db, redis, engine_env, ch, tmp_path):
    demo_port = free_port()
    log = tmp_path / "engine.log"
    env = {**os.environ, **engine_env, "UE_DEMO": "1", "UE_DEMO_PORT": str(demo_port), "ENGINE_WORKERS": "1",
           "UE_LIVE_LOG": str(log), "UE_LIVE_REFRESH": "0.5", "UE_PYTHON": sys.executable,
           "UE_ENV_FILE": str(tmp_path / "none.env")}
    proc = await asyncio.create_subprocess_exec("bash", "scripts/run.sh", cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out: list[str] = []
    seen = None
    try:
        deadline = time.monotonic() + 60
        while seen is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), max(0.1, deadline - time.monotonic())))
            assert line, "run.sh ended early:\n" + "".join(out)
            out.append(line.decode())
            m = LIVE.match(out[-1])
            if m and int(m[2]) >= 5 and int(m[3]) >= 1:
                seen = m
        assert "demo: target on http://127.0.0.1:%d; 7 monitors added" % demo_port in "".join(out)
        assert not closed(demo_port)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
        stop_s = time.monotonic() - started
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out.append(rest.decode())
    assert proc.returncode == 0, "".join(out)[-3000:]
    assert stop_s < 15
    assert "stopped (exit 0)" in out[-1]
    assert closed(demo_port)  # the demo target stopped too
    text = log.read_text()
    assert "supervisor stopped" in text and "Traceback" not in text
    supervisor = int(re.search(r"engine\.supervisor\[(\d+)\]", text)[1])
    assert not os.path.exists(f"/proc/{supervisor}")
    # The checks the view counted are in ClickHouse, for the demo monitors.
    demo_ids = [r["id"] for r in await db.fetch("SELECT id FROM monitors WHERE name LIKE 'demo: %'")]
    rows = await ch_rows(ch, f"SELECT count() AS n FROM {TEST_DB}.check_results "
                             f"WHERE monitor_id IN ({','.join(map(str, demo_ids))})")
    assert len(demo_ids) == 7 and rows[0]["n"] >= int(seen[2])

    # A second run adds no second copy of the demo monitors.
    from engine.live import add_demo_monitors
    from engine.settings import load
    note = await add_demo_monitors(load(environ=engine_env), demo_port)
    assert "0 monitors added, 7 already there" in note


async def test_env_file_fills_in_what_the_environment_does_not_set(engine_env, ch, tmp_path):
    """`run.sh migrate` with the services named in an env file: they are used (no local ones
    needed), and a variable already in the environment wins over the file."""
    file_db, env_db = f"{TEST_DB}_envfile", f"{TEST_DB}_envwins"
    env_file = tmp_path / "test.env"
    env_file.write_text("# services named in .env\n" + "".join(
        f"{k}={v}\n" for k, v in engine_env.items() if k != "CLICKHOUSE_DATABASE")
        + f'CLICKHOUSE_DATABASE="{file_db}"\nexport ENGINE_WORKERS=1\n')
    base = {k: v for k, v in os.environ.items() if k not in engine_env}
    for db, extra in ((file_db, {}), (env_db, {"CLICKHOUSE_DATABASE": env_db})):
        await ch.execute(f"DROP DATABASE IF EXISTS {db}")
        proc = await asyncio.create_subprocess_exec(
            "bash", "scripts/run.sh", "migrate", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**base, **extra, "UE_ENV_FILE": str(env_file), "UE_PYTHON": sys.executable})
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, out.decode()
        assert b"services: ready" not in out  # the named services were used, no local start
        found = await ch_rows(ch, f"SELECT name FROM system.databases WHERE name = '{db}'")
        assert found == [{"name": db}]
        await ch.execute(f"DROP DATABASE IF EXISTS {db}")


# -- deployment files (Docker cannot run here: check what can be checked) ----------------------
def env_example_names() -> set[str]:
    return {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
            if re.match(r"^[A-Z][A-Z0-9_]*=", line)}


def test_docker_compose_parses_and_names_the_env_variables_of_env_example():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"dragonfly", "postgres", "clickhouse", "migrate", "engine"} <= set(services)
    for name in ("migrate", "engine"):  # both from the shared x-engine block
        assert set(services[name]["environment"]) - {"PROMETHEUS_MULTIPROC_DIR", "UE_SINKS_SPOOL_DIR"} \
            == env_example_names()
    flags = services["dragonfly"]["command"]
    assert "--cluster_mode=emulated" in flags and "--lock_on_hashtags" in flags
    assert not any("allow-undeclared-keys" in f for f in flags)
    engine = services["engine"]
    assert engine["command"] == ["run"] and engine["stop_signal"] == "SIGTERM"
    assert int(engine["stop_grace_period"].rstrip("s")) > 10 + 15  # grace_ms + the supervisor's margin
    assert engine["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert engine["ulimits"]["nofile"]["soft"] >= 65536


def test_systemd_unit_and_sysctl_settings():
    import configparser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(ROOT / "config/uptime-engine.service")
    svc = unit["Service"]
    assert svc["Restart"] == "always" and svc["KillSignal"] == "SIGTERM" and svc["KillMode"] == "mixed"
    assert int(svc["TimeoutStopSec"]) > 10 + 15
    assert int(svc["LimitNOFILE"]) >= 65536
    assert svc["ExecStart"].endswith("uptime-engine run") and svc["RestartPreventExitStatus"] == "2"
    # The supervisor speaks sd_notify (tests/test_sdnotify.py); it pings at half the interval.
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "main" and int(svc["WatchdogSec"]) >= 10
    sysctl = dict(line.split(" = ", 1) for line in (ROOT / "config/sysctl.d/60-uptime-engine.conf")
                  .read_text().splitlines() if line and not line.startswith("#"))
    assert sysctl["net.ipv4.tcp_tw_reuse"] == "1"
    low, high = map(int, sysctl["net.ipv4.ip_local_port_range"].split())
    assert high - low > 50000
    assert int(sysctl["fs.nr_open"]) >= int(svc["LimitNOFILE"])
    assert {"fs.file-max", "net.core.somaxconn", "net.ipv4.tcp_fin_timeout"} <= set(sysctl)
