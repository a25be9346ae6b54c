"""The HTTP check, independent of the client that moves the bytes.

`run_http(client, spec, ...)` owns the semantics every HTTP path shares: the hard deadline
(spec.timeout_ms across DNS, connect, TLS, every redirect hop, headers and body), the target
policy for IP literals, redirects (followed up to max_redirects, each hop on a new connection),
the status verdict, the keyword verdict and the result's phases (those of the last hop).
A client only implements `fetch()` -> `Exchange` (see `HttpClient`); the aiohttp and the lean
paths are interchangeable behind it. `run_http` never raises except `CancelledError`.
"""
from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Protocol

from yarl import URL

from engine.errors import InvalidMonitor
from engine.models import MonitorSpec, ProbeResult
from engine.probes.body import KeywordScan
from engine.probes.deadline import Deadline
from engine.probes.outcome import ProbeFailure, Timings, failure, result, short
from engine.probes.resolver import Resolver
from engine.probes.status import parse_expected_status
from engine.probes.tls import expiry_days
from engine.settings import ProbeSettings

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


class Exchange(Protocol):
    """One response on its own connection, headers received."""

    status: int
    location: str | None

    async def read(self, scan: KeywordScan) -> None:
        """Feed the (decoded) body to `scan` until it is satisfied or the body ends."""
    def close(self) -> None:
        """Drop the connection now (no keep-alive, no draining)."""


class HttpClient(Protocol):
    async def fetch(self, method: str, url: URL, headers: dict[str, str], body: str | None,
                    verify: bool, timings: Timings) -> Exchange: ...


def parse_url(text: str | None) -> URL:
    """The monitor's URL, or InvalidMonitor: absolute http(s) with a host."""
    if not text:
        raise InvalidMonitor("http monitor without url")
    try:
        url = URL(text)
    except (ValueError, TypeError) as exc:
        raise InvalidMonitor(short(f"invalid url {text!r}: {exc}")) from None
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise InvalidMonitor(short(f"invalid url {text!r}: expected http(s)://host/…"))
    return url


def _redirect(url: URL, location: str) -> URL:
    try:
        target = url.join(URL(location))
    except (ValueError, TypeError):
        raise ProbeFailure("protocol", short(f"invalid redirect Location {location!r}")) from None
    if target.scheme not in ("http", "https") or not target.raw_host:
        raise ProbeFailure("protocol", short(f"redirect to unsupported URL {location!r}"))
    return target.with_fragment(None)


async def run_http(client: HttpClient, spec: MonitorSpec, settings: ProbeSettings,
                   resolver: Resolver) -> ProbeResult:
    """One HTTP check of `spec` through `client` (see module docstring)."""
    t0 = perf_counter()
    timings: Timings | None = None
    status = 0
    try:
        matcher = parse_expected_status(spec.expected_status)
        url = parse_url(spec.url)
    except InvalidMonitor as exc:
        return result(t0, None, ok=False, kind="invalid", error=str(exc))
    needle = spec.keyword.encode() if spec.keyword else None
    method = spec.method.upper() if spec.method else "GET"
    headers, body = spec.headers, spec.body
    origin = url.raw_host
    cert_days: float | None = None
    try:
        async with Deadline(asyncio.get_running_loop(), spec.timeout_ms / 1000.0):
            redirects = 0
            while True:
                timings = Timings(tls=url.scheme == "https")
                resolver.check_literal(url.raw_host, timings)  # names are checked after DNS
                ex = await client.fetch(method, url, headers, body, spec.verify_tls, timings)
                timings.headers = perf_counter()
                try:
                    status = ex.status
                    if timings.tls:
                        cert_days = expiry_days(timings.tls_transport)
                        # the transport's context holds these timings (current_timings): drop
                        # the cycle so the connection is freed by refcount, not the cyclic GC
                        timings.tls_transport = None
                    if spec.follow_redirects and status in REDIRECT_CODES and ex.location:
                        if redirects >= settings.max_redirects:
                            raise ProbeFailure("too_many_redirects", short(
                                f"more than {settings.max_redirects} redirects (next: {ex.location})"))
                        redirects += 1
                        url = _redirect(url, ex.location)
                        if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
                            method, body = "GET", None
                        if url.raw_host != origin and headers:
                            headers = {k: v for k, v in headers.items()
                                       if k.lower() not in _CREDENTIAL_HEADERS}
                        continue
                    if status not in matcher:
                        return result(t0, timings, ok=False, status=status, kind="http_status",
                                      error=f"HTTP {status} (expected {matcher.text})",
                                      cert_days=cert_days)
                    if needle is None:
                        return result(t0, timings, status=status, cert_days=cert_days)
                    scan = KeywordScan(needle, settings.max_body_bytes)
                    if method != "HEAD":
                        await ex.read(scan)
                    ok, msg = scan.verdict(spec.invert_keyword, spec.keyword or "")
                    return result(t0, timings, ok=ok, status=status, kind="" if ok else "keyword",
                                  error=msg, cert_days=cert_days)
                finally:
                    ex.close()
    except Exception as exc:  # noqa: BLE001 - every failure becomes a verdict
        res = failure(t0, timings, exc, status, spec.timeout_ms)
        res.cert_expiry_days = cert_days
        return res
    finally:
        if timings is not None:  # a hop that failed after its TLS handshake
            timings.tls_transport = None
