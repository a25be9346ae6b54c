"""Command line: `uptime-engine run|migrate|monitors|status|history|check`.

Exit codes: 0 success; 2 bad input (settings, arguments, monitor rows); 3 a service is unreachable.
Every failure prints one line to stderr, never a secret.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from engine import logs
from engine.errors import EngineError, InvalidMonitor, ServiceUnavailable, SettingsError
from engine.settings import Settings, load, redact_url

log = logging.getLogger("engine.cli")
EXIT_BAD_INPUT, EXIT_UNAVAILABLE = 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="uptime-engine", description="High-throughput uptime checker engine")
    p.add_argument("--config", help="TOML settings file (default config/engine.toml; env UE_CONFIG)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="supervisor + workers + scheduler")
    run.add_argument("--workers", type=int, help="worker processes (ENGINE_WORKERS; default CPU count)")
    run.add_argument("--concurrency", type=int, help="max in-flight probes per worker (ENGINE_CONCURRENCY)")
    run.add_argument("--probe-id", help="name of this probe host (ENGINE_PROBE_ID)")
    run.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0 = off)")

    sub.add_parser("migrate", help="create/update the PostgreSQL and ClickHouse schemas")

    mon = sub.add_parser("monitors", help="add, list, disable or import monitors")
    msub = mon.add_subparsers(dest="action", required=True)
    add = msub.add_parser("add", help="add one monitor: URL (http) or HOST:PORT (tcp)")
    add.add_argument("target")
    add.add_argument("--name", default="")
    add.add_argument("--interval", type=int, default=60, help="seconds (1..86400)")
    add.add_argument("--timeout-ms", type=int, default=10000)
    add.add_argument("--retries", type=int, default=3)
    add.add_argument("--keyword")
    add.add_argument("--expected-status", default="200-299")
    lst = msub.add_parser("list", help="list monitors with their status")
    lst.add_argument("--json", action="store_true")
    dis = msub.add_parser("disable", help="disable monitors by id")
    dis.add_argument("ids", nargs="+", type=int)
    imp = msub.add_parser("import", help="import monitors from CSV or JSON lines")
    imp.add_argument("file")
    imp.add_argument("--partial", action="store_true", help="import the good rows even if some are bad")

    st = sub.add_parser("status", help="queue depth, backlog, in-flight, workers")
    st.add_argument("--json", action="store_true")
    hist = sub.add_parser("history", help="a monitor's recent job lifecycle")
    hist.add_argument("monitor_id", type=int)
    hist.add_argument("--json", action="store_true")
    chk = sub.add_parser("check", help="run one check now and print its phases")
    chk.add_argument("target", help="URL or HOST:PORT")
    chk.add_argument("--timeout-ms", type=int, default=10000)
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {"engine.log_level": args.log_level}
    if args.command == "run":
        overrides |= {"engine.workers": args.workers, "engine.concurrency": args.concurrency,
                      "engine.probe_id": args.probe_id, "engine.metrics_port": args.metrics_port}
    return load(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from(args)
        logs.configure(settings.engine.log_level)
        return COMMANDS[args.command](settings, args)
    except SettingsError as exc:
        print(f"uptime-engine: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except InvalidMonitor as exc:
        print(f"uptime-engine: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ServiceUnavailable as exc:
        print(f"uptime-engine: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except EngineError as exc:
        print(f"uptime-engine: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# -- commands ----------------------------------------------------------------------------------
async def preflight(settings: Settings, clickhouse_required: bool = False) -> None:
    """Fail fast, with one line, when a service the engine needs cannot be reached."""
    import asyncpg
    from redis.exceptions import RedisError

    from engine.queue import connect

    redis = connect(settings.dragonfly)
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable(f"Dragonfly at {settings.dragonfly.host}:{settings.dragonfly.port} "
                                 f"is unreachable: {exc}") from None
    finally:
        await redis.aclose()
    try:
        conn = await asyncpg.connect(settings.postgres.dsn, timeout=5)
        await conn.close()
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
        raise ServiceUnavailable(f"PostgreSQL at {redact_url(settings.postgres.dsn)} is unreachable: "
                                 f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    from engine.sinks.clickhouse import ClickHouse
    ch = ClickHouse(settings.clickhouse)
    try:
        await ch.version()
    except ServiceUnavailable as exc:
        if clickhouse_required:
            raise
        log.warning("%s; results are kept until it answers", exc)
    finally:
        await ch.close()


def cmd_run(settings: Settings, args) -> int:
    from engine.supervisor import Supervisor

    asyncio.run(preflight(settings))

    def reload() -> Settings:
        return settings_from(args)

    supervisor = Supervisor(settings, reload=reload)
    code = supervisor.run()
    if supervisor.exit_reason:
        print(f"uptime-engine: {supervisor.exit_reason}", file=sys.stderr)
    return code


def cmd_migrate(settings: Settings, args) -> int:
    from engine.migrate import migrate

    asyncio.run(preflight(settings, clickhouse_required=True))
    asyncio.run(migrate(settings))
    print("migrated: PostgreSQL and ClickHouse schemas are up to date")
    return 0


def cmd_monitors(settings: Settings, args) -> int:
    from engine import admin

    return asyncio.run(admin.monitors(settings, args))


def cmd_status(settings: Settings, args) -> int:
    from engine import admin

    return asyncio.run(admin.status(settings, args))


def cmd_history(settings: Settings, args) -> int:
    from engine import admin

    return asyncio.run(admin.history(settings, args))


def cmd_check(settings: Settings, args) -> int:
    from engine.probes import check_target

    async def one():
        return await check_target(args.target, settings.probes, args.timeout_ms)

    result, report = asyncio.run(one())
    print(report)
    return 0 if result.ok else 1


COMMANDS = {"run": cmd_run, "migrate": cmd_migrate, "monitors": cmd_monitors, "status": cmd_status,
            "history": cmd_history, "check": cmd_check}
