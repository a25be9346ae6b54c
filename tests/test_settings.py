"""Settings: file < environment < CLI, validated once, one-line errors naming the setting."""
from __future__ import annotations

import subprocess
import sys

import pytest

from engine.errors import SettingsError
from engine.settings import load, redact_url
from tests.conftest import ROOT


def test_precedence_file_env_cli(tmp_path):
    cfg = tmp_path / "engine.toml"
    cfg.write_text("[engine]\nconcurrency = 10\nworkers = 3\n[queue]\npartitions = 8\n")
    s = load(cfg, environ={"ENGINE_CONCURRENCY": "20", "UE_QUEUE_PARTITIONS": "32"},
             overrides={"engine.concurrency": 30})
    assert (s.engine.workers, s.engine.concurrency, s.queue.partitions) == (3, 30, 32)
    assert load(cfg, environ={}).engine.concurrency == 10


@pytest.mark.parametrize("environ, message", [
    ({"ENGINE_CONCURRENCY": "0"}, "invalid setting engine.concurrency (from ENGINE_CONCURRENCY)"),
    ({"DRAGONFLY_PORT": "seventy"}, "invalid setting dragonfly.port (from DRAGONFLY_PORT)"),
    ({"POSTGRES_DSN": "mysql://x"}, "invalid setting postgres.dsn"),
    ({"UE_PROBES_DENY_NETWORKS": "10.0.0.0/8,not-a-net"}, "invalid setting probes.deny_networks"),
    ({"ENGINE_PROBE_ID": "eu west|2"}, "invalid setting engine.probe_id (from ENGINE_PROBE_ID)"),
    ({"UE_QUEUE_NO_SUCH": "1"}, "unknown setting queue.no_such (from UE_QUEUE_NO_SUCH)"),
])
def test_invalid_values_name_the_setting(environ, message):
    with pytest.raises(SettingsError) as err:
        load(environ=environ)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_secrets_never_shown():
    s = load(environ={"DRAGONFLY_PASSWORD": "hunter2", "CLICKHOUSE_PASSWORD": "ch-secret",
                      "POSTGRES_DSN": "postgresql://app:pg-secret@db/x"})
    text = repr(s)
    assert "hunter2" not in text and "ch-secret" not in text and "pg-secret" not in text
    assert redact_url("postgresql://app:pg-secret@db:5432/x") == "postgresql://app:***@db:5432/x"


def test_cli_bad_setting_exits_non_zero_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "engine", "run", "--concurrency", "-5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "uptime-engine: invalid setting engine.concurrency (from --concurrency): Expected `int` >= 1"]


def test_cli_unreachable_service_is_one_line_without_password(engine_env):
    env = {**engine_env, "POSTGRES_DSN": "postgresql://app:pg-secret@127.0.0.1:1/x",
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "engine", "run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "PostgreSQL at postgresql://app:***@127.0.0.1:1/x is unreachable" in lines[0]
    assert "pg-secret" not in proc.stderr
