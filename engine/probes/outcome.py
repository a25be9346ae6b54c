"""Shared pieces of every probe path: phase timings, the failure exception, error classification
and building the `ProbeResult`.

Contract: a probe path raises `ProbeFailure(kind, message)` for verdicts it decides itself, lets
other exceptions propagate, and its caller turns anything into a result with `classify()` — so a
failure always ends as one `error_kind` from `ERROR_KINDS` and a short single-line message.
All clocks are `time.perf_counter()` (uvloop's `loop.time()` only has millisecond resolution).
"""
from __future__ import annotations

import contextvars
import errno
import socket
import ssl
from time import perf_counter

from engine.models import ProbeResult

MAX_ERROR_CHARS = 200
MAX_HEADERS = 128  # response header count cap, both paths (aiohttp's default, too)


class ProbeFailure(Exception):
    """A verdict reached by a probe: `kind` is one of ERROR_KINDS, `str(exc)` the message."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Timings:
    """perf_counter() marks of one connection attempt (one redirect hop); 0.0 = not reached.

    dns_ms is a duration (the resolver may answer from its cache; None for an IP literal);
    `resolved` is set once the address is known (also for literals). `start` is when the hop
    began, `connect0` when the TCP connect began (after DNS), `connected` when TCP was up, `ready`
    when TLS (if any) was done, `first_byte` when the first response byte arrived, `headers` when
    the response head was complete.
    """

    __slots__ = ("start", "dns_ms", "resolved", "connect0", "connected", "ready", "first_byte",
                 "headers", "tls", "tls_transport")

    def __init__(self, tls: bool = False) -> None:
        self.start = self.connect0 = perf_counter()
        self.dns_ms: float | None = None
        self.resolved = False
        self.tls_transport: object = None  # the TLS connection's transport, for the certificate
        self.connected = self.ready = self.first_byte = self.headers = 0.0
        self.tls = tls

    def phase(self) -> str:
        """Where this attempt got to — names the phase a timeout interrupted."""
        if self.connected == 0.0:
            return "connecting" if self.resolved else "resolving"
        if self.ready == 0.0:
            return "in TLS handshake"
        if self.first_byte == 0.0:
            return "waiting for response"
        return "reading body" if self.headers else "receiving headers"


# The current check's Timings, for code that runs inside library calls (resolver, aiohttp's
# protocol factory) and cannot be handed it directly. Set per hop by the probe path.
current_timings: contextvars.ContextVar[Timings | None] = contextvars.ContextVar(
    "ue_probe_timings", default=None)


def short(text: str) -> str:
    """One line, at most MAX_ERROR_CHARS characters, no NUL (PostgreSQL text refuses it)."""
    line = " ".join(str(text).replace("\x00", "\\x00").split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 1] + "…"


_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN,
                errno.EADDRNOTAVAIL, errno.ENONET if hasattr(errno, "ENONET") else -1}
_LOCAL = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}  # our side, not the target's


def classify(exc: BaseException) -> tuple[str, str]:
    """Map an exception from any probe path to (error_kind, one-line message)."""
    if isinstance(exc, ProbeFailure):
        return exc.kind, short(str(exc))
    if isinstance(exc, TimeoutError):
        return "timeout", "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls", short(f"certificate verify failed: {exc.verify_message or exc.reason}")
    if isinstance(exc, ssl.CertificateError):
        return "tls", short(f"certificate error: {exc}")
    if isinstance(exc, ssl.SSLError):
        return "tls", short(f"TLS error: {exc.reason or exc}")
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return "reset", "connection reset by peer"
    if isinstance(exc, socket.gaierror):
        return "dns", short(f"DNS lookup failed: {exc.strerror or exc}")
    if isinstance(exc, OSError):
        if exc.errno in _UNREACHABLE:
            return "unreachable", short(f"unreachable: {exc.strerror or exc}")
        if exc.errno in _LOCAL:
            return "internal", short(f"local resource error: {exc.strerror or exc}")
        return "unreachable", short(f"network error: {exc.strerror or exc}")
    return "internal", short(f"internal error: {type(exc).__name__}: {exc}")


def result(t0: float, timings: Timings | None, *, ok: bool = True, status: int = 0,
           kind: str = "", error: str = "", cert_days: float | None = None) -> ProbeResult:
    """Build the ProbeResult: latency since t0, phases from the last hop's timings.

    Every phase lies inside [timings.start, now] and phases do not overlap, so their sum never
    exceeds latency_ms.
    """
    now = perf_counter()
    res = ProbeResult(ok=ok, latency_ms=round((now - t0) * 1000.0, 3), status_code=status,
                      error_kind=kind, error=error, cert_expiry_days=cert_days)
    if timings is not None:
        res.dns_ms = timings.dns_ms
        if timings.connected:
            res.connect_ms = round((timings.connected - timings.connect0) * 1000.0, 3)
            if timings.ready:
                if timings.tls:
                    res.tls_ms = round((timings.ready - timings.connected) * 1000.0, 3)
                if timings.first_byte:
                    res.ttfb_ms = round((timings.first_byte - timings.ready) * 1000.0, 3)
    return res


def failure(t0: float, timings: Timings | None, exc: BaseException, status: int = 0,
            timeout_ms: int = 0) -> ProbeResult:
    """Result for a failed check; a timeout message names the phase it interrupted."""
    kind, msg = classify(exc)
    if kind == "timeout" and timings is not None and not isinstance(exc, ProbeFailure):
        msg = f"timed out after {timeout_ms} ms {timings.phase()}" if timeout_ms else \
            f"timed out {timings.phase()}"
    return result(t0, timings, ok=False, status=status, kind=kind, error=msg)
