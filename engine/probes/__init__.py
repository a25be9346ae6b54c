"""Probes: run one HTTP or TCP check of a monitor and return its `ProbeResult`.

`Prober` is the worker's entry point: build it before fork, call `start()` once in each worker
(it makes the per-worker resolver, SSL contexts and HTTP client), then `check(spec)` from any
number of concurrent tasks. `check` never raises except `asyncio.CancelledError`; every failure
is a verdict with an `error_kind` from `engine.models.ERROR_KINDS`. Each check opens its own
connection (so connect and TLS are measured every time) and has a hard deadline of
`spec.timeout_ms` over DNS, connect, TLS, redirects, headers and body.

Layout: `http` (the HTTP check's semantics), `http_lean` (Protocol + httptools client for
GET/HEAD), `http_aiohttp` (aiohttp client, for the rest), `tcp`,
`resolver` (cached DNS + target policy), `connect`, `tls`, `deadline` (the per-check hard
deadline), `body` (keyword scan), `status` (expected_status), `outcome` (timings, error
classification), `report` (`check_target`).
"""
from __future__ import annotations

import logging
import ssl

from engine.models import MonitorSpec, ProbeResult
from engine.probes.http import run_http
from engine.probes.http_aiohttp import AiohttpClient
from engine.probes.http_lean import LeanClient
from engine.probes.outcome import short
from engine.probes.resolver import Resolver
from engine.probes.status import StatusMatcher, parse_expected_status
from engine.probes.tcp import run_tcp
from engine.probes.tls import make_contexts
from engine.settings import ProbeSettings

__all__ = ["Prober", "StatusMatcher", "check_target", "parse_expected_status"]

log = logging.getLogger("engine.probes")


class Prober:
    """Per-worker probe runner (see module docstring).

    `cafile` adds a CA bundle to the verifying context (tests, private CAs). `http_path` picks
    the HTTP client: 'lean' (default: the lean client for GET/HEAD without a body, aiohttp for
    the rest) or 'aiohttp' (aiohttp for everything).
    """

    def __init__(self, settings: ProbeSettings, *, cafile: str | None = None,
                 http_path: str = "lean") -> None:
        if http_path not in ("lean", "aiohttp"):
            raise ValueError(f"unknown http_path {http_path!r}")
        self.settings = settings
        self.http_path = http_path
        self._cafile = cafile
        self._resolver: Resolver | None = None
        self._http: AiohttpClient | None = None
        self._lean: LeanClient | None = None
        self._contexts: tuple[ssl.SSLContext, ssl.SSLContext] | None = None
        self._reported: set[str] = set()

    async def start(self) -> None:
        self._resolver = Resolver(self.settings)
        self._contexts = make_contexts(self._cafile)
        self._http = AiohttpClient(self.settings, self._resolver, self._contexts)
        await self._http.start()
        if self.http_path == "lean":
            self._lean = LeanClient(self.settings, self._resolver, self._contexts)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def check(self, spec: MonitorSpec) -> ProbeResult:
        """Run one check of `spec`; never raises except CancelledError."""
        try:
            assert self._resolver is not None and self._http is not None, "Prober.start() not called"
            if spec.type == "http":
                lean = self._lean
                client = lean if lean is not None and lean.covers(spec.method, spec.body) else self._http
                return await run_http(client, spec, self.settings, self._resolver)
            if spec.type == "tcp":
                return await run_tcp(spec, self.settings, self._resolver)
            return ProbeResult(ok=False, latency_ms=0.0, error_kind="invalid",
                               error=short(f"unknown monitor type {spec.type!r}"))
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the worker's loop
            name = type(exc).__name__
            if name not in self._reported:  # once per exception type, not per check
                self._reported.add(name)
                log.warning("probe internal error (%s), further ones logged at debug", name,
                            exc_info=True)
            else:
                log.debug("probe internal error for monitor %s", spec.id, exc_info=True)
            return ProbeResult(ok=False, latency_ms=0.0, error_kind="internal",
                               error=short(f"internal error: {name}: {exc}"))


from engine.probes.report import check_target  # noqa: E402  (uses Prober)
