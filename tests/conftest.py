"""Fixtures on the real services started by scripts/services.sh (Redis standing in for Dragonfly,
a Redis in cluster mode, PostgreSQL, ClickHouse). Every test gets flushed/truncated state."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from engine import settings as settings_mod
from engine.sinks.clickhouse import ClickHouse

ROOT = Path(__file__).resolve().parent.parent
# Several checkouts/sessions may share the local services: UE_TEST_SLOT=N gives a run its own
# Redis db, PostgreSQL and ClickHouse databases and cluster-node key prefix.
SLOT = int(os.environ.get("UE_TEST_SLOT", "0"))
TEST_DB = "ue_test" if SLOT == 0 else f"ue_test{SLOT}"
CLUSTER_PREFIX = f"t{SLOT}"


def _services_env() -> dict[str, str]:
    subprocess.run(["bash", str(ROOT / "scripts/services.sh"), "start"], check=True)
    out = subprocess.run(["bash", str(ROOT / "scripts/services.sh"), "env"], check=True,
                         capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.split())


@pytest.fixture(scope="session")
def services() -> dict[str, str]:
    return _services_env()


@pytest.fixture(scope="session")
def engine_env(services) -> dict[str, str]:
    """Environment for the engine under test: the project's services, test databases."""
    admin = services["POSTGRES_DSN"]

    async def prepare() -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {TEST_DB} WITH (FORCE)")
            await conn.execute(f"CREATE DATABASE {TEST_DB}")
        finally:
            await conn.close()

    asyncio.run(prepare())
    return {
        "DRAGONFLY_HOST": services["DRAGONFLY_HOST"],
        "DRAGONFLY_PORT": services["DRAGONFLY_PORT"],
        "UE_DRAGONFLY_DB": str(SLOT),
        "POSTGRES_DSN": admin.rsplit("/", 1)[0] + f"/{TEST_DB}",
        "CLICKHOUSE_URL": services["CLICKHOUSE_URL"],
        "CLICKHOUSE_DATABASE": TEST_DB,
        "ENGINE_PROBE_ID": "test-probe",
        "UE_ENGINE_METRICS_PORT": "0",
        "UE_SINKS_SPOOL_DIR": str(ROOT / ".services" / "test-spool"),
    }


@pytest.fixture
def settings(engine_env) -> settings_mod.Settings:
    return settings_mod.load(environ=engine_env)


@pytest.fixture
async def redis(services):
    client = aioredis.Redis(host="127.0.0.1", port=int(services["DRAGONFLY_PORT"]), db=SLOT)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(params=["standalone", "cluster"])
async def any_redis(request, services):
    """The queue scripts run on plain Redis and on a cluster-mode node (undeclared or cross-slot
    keys fail there)."""
    cluster = request.param == "cluster"
    port = services["UE_TEST_CLUSTER_PORT"] if cluster else services["DRAGONFLY_PORT"]
    client = aioredis.Redis(host="127.0.0.1", port=int(port), db=0 if cluster else SLOT)
    client.strict_scripts = cluster
    client.queue_prefix = CLUSTER_PREFIX  # cluster mode has one db: runs are kept apart by prefix
    async for key in client.scan_iter(match=f"{{{CLUSTER_PREFIX}:*", count=1000):
        await client.delete(key)
    await client.delete(f"{CLUSTER_PREFIX}:layout")
    yield client
    await client.aclose()


_migrated = False


@pytest.fixture
async def db(settings):
    """Migrated, empty PostgreSQL and ClickHouse test databases; yields a PG connection."""
    global _migrated
    from engine.migrate import migrate

    if not _migrated:
        await migrate(settings)
        _migrated = True
    conn = await asyncpg.connect(settings.postgres.dsn)
    await conn.execute("TRUNCATE monitors, monitor_status, monitor_deletions RESTART IDENTITY")
    ch = ClickHouse(settings.clickhouse)
    await ch.execute(f"TRUNCATE TABLE {TEST_DB}.check_results")
    await ch.close()
    spool = Path(settings.sinks.spool_dir)
    if spool.is_dir():
        for f in spool.iterdir():
            f.unlink()
    yield conn
    await conn.close()


@pytest.fixture
async def ch(settings):
    client = ClickHouse(settings.clickhouse)
    yield client
    await client.close()


async def ch_rows(ch: ClickHouse, sql: str) -> list[dict]:
    return await ch.query(sql)


class EngineProcess:
    """`uptime-engine run` as a real child process, its log kept in a file."""

    def __init__(self, env: dict[str, str], args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=ROOT,
                                     env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for_log(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"engine exited ({self.proc.returncode}):\n{self.output()[-3000:]}")
            await asyncio.sleep(0.1)
        raise AssertionError(f"{text!r} not logged within {timeout} s:\n{self.output()[-3000:]}")

    async def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"engine did not stop within {timeout} s:\n{self.output()[-3000:]}")
        self.log.close()
        return self.proc.returncode


@pytest.fixture
async def engine(engine_env, tmp_path, db, redis):
    """Factory: start(args, **env) -> EngineProcess; every one still running is stopped after."""
    started: list[EngineProcess] = []

    def start(*args: str, **env: str) -> EngineProcess:
        proc = EngineProcess({**engine_env, **env}, list(args or ["run", "--workers", "1"]),
                             tmp_path / f"engine-{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.proc.poll() is None:
            await proc.stop(signal.SIGKILL)


class PrivateService:
    """A private Redis / PostgreSQL / ClickHouse of one test, on its own port and folder, so the
    test can stop and restart it without disturbing anything else."""

    def __init__(self, name: str, folder: Path) -> None:
        from tests.targets import free_port
        self.name = name
        self.port = free_port()
        self.env = {"UE_SERVICES_DIR": str(folder)}
        if name == "redis":
            self.env["UE_REDIS_PORT"] = str(self.port)
            self.engine_env = {"DRAGONFLY_PORT": str(self.port), "UE_DRAGONFLY_DB": "0"}
        elif name == "postgres":
            self.env["UE_PG_PORT"] = str(self.port)
            self.engine_env = {"POSTGRES_DSN": f"postgresql://postgres@127.0.0.1:{self.port}/postgres"}
        else:
            self.env |= {"UE_CH_HTTP_PORT": str(self.port), "UE_CH_TCP_PORT": str(free_port())}
            self.engine_env = {"CLICKHOUSE_URL": f"http://127.0.0.1:{self.port}", "CLICKHOUSE_DATABASE": "default"}

    def _script(self, action: str) -> None:
        subprocess.run(["bash", str(ROOT / "scripts/services.sh"), action, self.name], check=True,
                       env={**os.environ, **self.env}, timeout=120)

    def start(self) -> None:
        self._script("start-one")

    def stop(self) -> None:
        self._script("stop-one")


@pytest.fixture
def private_service(request):
    made: list[PrivateService] = []
    # Not under pytest's tmp_path: that is root-only (0700) and PostgreSQL runs as `postgres`.
    base = ROOT / ".services" / "private" / f"{request.node.name[:40]}-{os.getpid()}"

    def make(name: str) -> PrivateService:
        svc = PrivateService(name, base / name)
        svc.start()
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.stop()
    shutil.rmtree(base, ignore_errors=True)
