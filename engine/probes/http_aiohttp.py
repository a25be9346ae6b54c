"""HTTP client on aiohttp: one session and connector per worker, a new connection per check.

The connector closes every connection after its response (force_close), resolves through the
worker's policy-applying `Resolver` and skips aiohttp's own DNS cache and timeouts (the check's
deadline is `run_http`'s). No cookies are kept between checks. Phase marks come without a
TraceConfig: the resolver records DNS, and the connector's protocol records TCP-connected (it is
built right after the socket connects), TLS-done (`connection_made`) and the first byte.
The response head is bounded by aiohttp's limits: a line or field of at most
min(8190, max_header_bytes) bytes and at most MAX_HEADERS headers (the lean client also caps
the head's total bytes at max_header_bytes). `Prober` uses this client for requests the lean
client does not cover (methods other than GET/HEAD, request bodies), or for all with
http_path='aiohttp'.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
from time import perf_counter
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.client_proto import ResponseHandler
from yarl import URL

from engine.probes.body import KeywordScan
from engine.probes.outcome import MAX_HEADERS, ProbeFailure, Timings, classify, current_timings, short
from engine.probes.resolver import Resolver
from engine.settings import ProbeSettings


class _PolicyResolver(AbstractResolver):
    """aiohttp resolver adapter over the worker's `Resolver` (policy applied, timings recorded)."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        addrs = await self._resolver.resolve(host, current_timings.get())
        return [{"hostname": host, "host": ip, "port": port, "family": fam,
                 "proto": 0, "flags": socket.AI_NUMERICHOST} for fam, ip in addrs]

    async def close(self) -> None:
        pass


class _TimedHandler(ResponseHandler):
    """aiohttp's protocol, marking connected / TLS-done / first byte on the current Timings."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._ue_timings = t = current_timings.get()
        if t is not None:
            t.connected = perf_counter()  # built by create_connection(sock=connected socket)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self._ue_timings
        if t is not None:
            t.ready = perf_counter()
            if t.tls:
                t.tls_transport = transport
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        t = self._ue_timings
        if t is not None and not t.first_byte:
            t.first_byte = perf_counter()
        super().data_received(data)


class _Connector(aiohttp.TCPConnector):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # aiohttp builds its protocol with `self._factory` (stable since 3.0); without it we
        # only lose the connect/TLS/TTFB split, so a missing attribute is tolerated.
        if hasattr(self, "_factory"):
            self._factory = lambda: _TimedHandler(self._loop)


class _AiohttpExchange:
    __slots__ = ("resp", "status", "location")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.status = resp.status
        self.location = resp.headers.get("Location")

    async def read(self, scan: KeywordScan) -> None:
        content = self.resp.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk or scan.feed(chunk):
                    return
        except aiohttp.ClientError as exc:
            raise classify_aiohttp(exc) or exc from None

    def close(self) -> None:
        self.resp.close()


def classify_aiohttp(exc: BaseException) -> ProbeFailure | None:
    """aiohttp's exceptions as verdicts; None for anything `classify()` already handles."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return ProbeFailure(*classify(exc.certificate_error))
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return ProbeFailure("dns", short(f"DNS lookup failed: {exc.os_error.strerror or exc.os_error}"))
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ProbeFailure(*classify(exc.os_error))
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ProbeFailure("reset", "server closed the connection without a complete response")
    if isinstance(exc, aiohttp.ClientPayloadError):
        cause = exc.__cause__ or (exc.args[1] if len(exc.args) > 1 else None)
        text = f"{exc} {cause!r}"
        if "ContentLengthError" in text or "not completed" in text and "TransferEncoding" not in text:
            return ProbeFailure("reset", "connection closed before the body was complete")
        return ProbeFailure("protocol", short(f"invalid response body: {exc}"))
    if isinstance(exc, aiohttp.ClientResponseError):
        return ProbeFailure("protocol", short(f"invalid HTTP response: {exc.message}"))
    if isinstance(exc, aiohttp.InvalidURL):
        return ProbeFailure("invalid", short(f"invalid url: {exc}"))
    if isinstance(exc, aiohttp.ClientOSError) and not isinstance(exc, ConnectionError):
        return ProbeFailure(*classify(OSError(exc.errno, exc.strerror)))
    if isinstance(exc, aiohttp.ClientConnectionError) and not isinstance(exc, OSError):
        return ProbeFailure("reset", short(f"connection error: {exc}"))
    return None


class AiohttpClient:
    """`HttpClient` on one aiohttp session per worker (build with `start()`, after fork)."""

    def __init__(self, settings: ProbeSettings, resolver: Resolver,
                 contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
        self._settings = settings
        self._resolver = resolver
        self._verify, self._loose = contexts
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        s = self._settings
        field = min(8190, s.max_header_bytes)
        connector = _Connector(
            force_close=True, limit=0, use_dns_cache=False, ssl=self._verify,
            resolver=_PolicyResolver(self._resolver), enable_cleanup_closed=False)
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None, sock_read=None),
            headers={"User-Agent": s.user_agent}, raise_for_status=False, trust_env=False,
            max_line_size=field, max_field_size=field, max_headers=MAX_HEADERS)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, method: str, url: URL, headers: dict[str, str], body: str | None,
                    verify: bool, timings: Timings) -> _AiohttpExchange:
        assert self._session is not None, "AiohttpClient.start() was not called"
        token = current_timings.set(timings)
        try:
            resp = await self._session.request(
                method, url, headers=headers or None, data=body, allow_redirects=False,
                ssl=self._verify if verify else self._loose)
        except ProbeFailure:
            raise
        except aiohttp.ClientError as exc:
            mapped = classify_aiohttp(exc)
            if mapped is None:
                raise
            raise mapped from None
        except ValueError as exc:  # bad header names/values, URL pieces
            raise ProbeFailure("invalid", short(f"invalid request: {exc}")) from None
        finally:
            current_timings.reset(token)
        return _AiohttpExchange(resp)
