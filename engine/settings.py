"""Typed settings: config/engine.toml < environment < CLI flags, validated once, before fork.

Only this module reads the environment. Every other part gets a frozen `Settings` passed down.
An invalid value raises `SettingsError` whose one-line message names the setting.
"""
from __future__ import annotations

import os
import socket
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
from msgspec import Meta

from engine.errors import SettingsError

SECONDS = 1000  # settings in milliseconds read as `5 * SECONDS`
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "engine.toml"

Port = Annotated[int, Meta(ge=1, le=65535)]
Positive = Annotated[int, Meta(ge=1)]
NonNegative = Annotated[int, Meta(ge=0)]


def redact_url(url: str) -> str:
    """`postgresql://user:secret@host/db` -> `postgresql://user:***@host/db` (for logs and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


class _Redacted:
    """Mixin: repr() of a section that holds secrets never shows them."""

    _secret_fields: tuple[str, ...] = ()

    def __repr__(self) -> str:
        shown = []
        for name in self.__struct_fields__:  # type: ignore[attr-defined]
            value = getattr(self, name)
            if name in self._secret_fields and value:
                value = "***"
            elif name == "dsn":
                value = redact_url(value)
            shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


class DragonflySettings(_Redacted, msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Port = 6379
    password: str = ""
    tls: bool = False
    db: NonNegative = 0
    prefix: Annotated[str, Meta(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")] = "ue"
    _secret_fields = ("password",)


class PostgresSettings(_Redacted, msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"


class ClickHouseSettings(_Redacted, msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str = "http://127.0.0.1:8123"
    user: str = "default"
    password: str = ""
    database: Annotated[str, Meta(min_length=1, pattern=r"^[A-Za-z0-9_]+$")] = "default"
    _secret_fields = ("password",)


class EngineSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    workers: NonNegative = 0  # 0 = CPU count
    concurrency: Positive = 1000
    # '' = hostname. No '|' or spaces: it is part of lease tokens and job history entries.
    probe_id: Annotated[str, Meta(pattern=r"^[^|\s]*$")] = ""
    log_level: Annotated[str, Meta(pattern=r"^(?i:debug|info|warning|error)$")] = "info"
    grace_ms: Positive = 10 * SECONDS
    heartbeat_timeout_ms: Positive = 30 * SECONDS  # a worker silent this long is killed and replaced
    metrics_port: Annotated[int, Meta(ge=0, le=65535)] = 9464  # 0 = off


class QueueSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    partitions: Annotated[int, Meta(ge=1, le=1024)] = 16
    claim_batch: Positive = 500
    poll_ms: Positive = 50
    claim_min_ms: NonNegative = 10  # claims at least this far apart unless the last came back full
    lease_margin_ms: Positive = 5 * SECONDS
    backoff_ms: Positive = 1 * SECONDS  # first retry; doubles each attempt
    backoff_max_ms: Positive = 60 * SECONDS
    ack_interval_ms: Positive = 20
    history_len: NonNegative = 20
    history_ttl_s: Positive = 86_400


class SinkSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    flush_ms: Positive = 1 * SECONDS
    clickhouse_batch: Positive = 20_000
    spool_dir: str = "spool"  # write-ahead segments; they pile up here while ClickHouse is down
    # While ClickHouse is down the oldest segments are dropped (logged, counted) rather than let the
    # spool outgrow spool_max_mb (0 = no cap) or leave less than spool_min_free_mb on its disk.
    spool_max_mb: NonNegative = 0
    spool_min_free_mb: NonNegative = 1024


class SchedulerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sync_ms: Positive = 1 * SECONDS
    full_sync_s: Positive = 300
    lock_ttl_ms: Positive = 10 * SECONDS
    log_each_limit: NonNegative = 50  # larger syncs log one summary line


class ProbeSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_body_bytes: Positive = 1 << 20
    max_header_bytes: Positive = 64 << 10
    max_redirects: NonNegative = 10
    user_agent: str = "uptime-engine/0.1"
    allow_networks: tuple[str, ...] = ()
    deny_networks: tuple[str, ...] = ("169.254.0.0/16", "fe80::/10")


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    dragonfly: DragonflySettings = DragonflySettings()
    postgres: PostgresSettings = PostgresSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    engine: EngineSettings = EngineSettings()
    queue: QueueSettings = QueueSettings()
    sinks: SinkSettings = SinkSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    probes: ProbeSettings = ProbeSettings()

    @property
    def workers(self) -> int:
        return self.engine.workers or os.cpu_count() or 1

    @property
    def probe_id(self) -> str:
        return self.engine.probe_id or socket.gethostname()


# Contract environment names (DESIGN.md) -> setting path. Any other setting is reachable as
# UE_<SECTION>_<NAME>, e.g. UE_QUEUE_PARTITIONS=32.
ENV_NAMES: dict[str, str] = {
    "DRAGONFLY_HOST": "dragonfly.host",
    "DRAGONFLY_PORT": "dragonfly.port",
    "DRAGONFLY_PASSWORD": "dragonfly.password",
    "DRAGONFLY_TLS": "dragonfly.tls",
    "POSTGRES_DSN": "postgres.dsn",
    "CLICKHOUSE_URL": "clickhouse.url",
    "CLICKHOUSE_USER": "clickhouse.user",
    "CLICKHOUSE_PASSWORD": "clickhouse.password",
    "CLICKHOUSE_DATABASE": "clickhouse.database",
    "ENGINE_WORKERS": "engine.workers",
    "ENGINE_CONCURRENCY": "engine.concurrency",
    "ENGINE_PROBE_ID": "engine.probe_id",
}
_SECTION_TYPES = {name: type(getattr(Settings(), name)) for name in Settings.__struct_fields__}


def _set(tree: dict[str, Any], path: str, value: Any, origin: str) -> None:
    section, _, name = path.partition(".")
    if section not in Settings.__struct_fields__ or not name:
        raise SettingsError(f"unknown setting {origin}")
    tree.setdefault(section, {})[name] = value


def _coerce(path: str, raw: str) -> Any:
    """Environment values are strings: msgspec parses numbers and booleans (strict=False); a list
    setting is written comma-separated."""
    section, _, name = path.partition(".")
    hints = typing.get_type_hints(_SECTION_TYPES[section]) if section in _SECTION_TYPES else {}
    if typing.get_origin(hints.get(name)) in (list, tuple):
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def _env_overrides(environ: dict[str, str]) -> list[tuple[str, str, str]]:
    found = []
    for env, path in ENV_NAMES.items():
        if env in environ and environ[env] != "":
            found.append((path, environ[env], env))
    for env, raw in environ.items():
        if env.startswith("UE_") and env.count("_") >= 2:
            section, _, name = env[3:].lower().partition("_")
            if section in Settings.__struct_fields__:
                found.append((f"{section}.{name}", raw, env))
    return found


def load(config: str | Path | None = None, overrides: dict[str, Any] | None = None,
         environ: dict[str, str] | None = None) -> Settings:
    """Build the settings: TOML file, then environment, then `overrides` ({'engine.workers': 2})."""
    environ = dict(os.environ if environ is None else environ)
    path = Path(config or environ.get("UE_CONFIG") or DEFAULT_CONFIG)
    tree: dict[str, Any] = {}
    if path.exists():
        try:
            tree = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, OSError) as exc:
            raise SettingsError(f"cannot read {path}: {exc}") from None
    elif config:
        raise SettingsError(f"config file {path} does not exist")
    origins: dict[str, str] = {}
    for key, raw, env in _env_overrides(environ):
        _set(tree, key, _coerce(key, raw), env)
        origins[key] = env
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        _set(tree, key, value, key)
        origins[key] = "--" + key.split(".", 1)[1].replace("_", "-")
    try:
        settings = msgspec.convert(tree, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_describe(exc, origins)) from None
    _check(settings)
    return settings


def _describe(exc: msgspec.ValidationError, origins: dict[str, str]) -> str:
    msg = str(exc)
    # msgspec: "Expected `int` >= 1, got `0` - at `$.engine.concurrency`"
    what, _, where = msg.rpartition(" - at `$.")
    key = where.rstrip("`").split("[", 1)[0] if what else ""
    if what.startswith("Object contains unknown field `"):
        key = f"{key}.{what.split('`')[1]}" if key else what.split("`")[1]
        name = origins.get(key)
        return f"unknown setting {key}" + (f" (from {name})" if name else "")
    if key:
        name = origins.get(key)
        return f"invalid setting {key}" + (f" (from {name})" if name else "") + f": {what}"
    return f"invalid settings: {msg}"


def _check(s: Settings) -> None:
    """Cross-field and format checks msgspec's constraints cannot express."""
    import ipaddress

    dsn = urlsplit(s.postgres.dsn)
    if dsn.scheme not in ("postgres", "postgresql"):
        raise SettingsError("invalid setting postgres.dsn (POSTGRES_DSN): expected postgresql://…")
    ch = urlsplit(s.clickhouse.url)
    if ch.scheme not in ("http", "https") or not ch.hostname:
        raise SettingsError("invalid setting clickhouse.url (CLICKHOUSE_URL): expected http(s)://host:port")
    for key in ("allow_networks", "deny_networks"):
        for net in getattr(s.probes, key):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise SettingsError(f"invalid setting probes.{key}: {net!r} is not a network") from None
