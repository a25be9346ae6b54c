"""The TCP check: resolve (policy applied), connect, optionally send `tcp_send` and wait for a
reply containing `tcp_expect`, all within spec.timeout_ms. Never raises except CancelledError.

`tcp_send` and `tcp_expect` are text with backslash escapes (`\\r\\n`, `\\x00`, `\\\\`), encoded
UTF-8, because a web form cannot hold raw control bytes. The reply is searched as it streams in
(at most max_body_bytes), never buffered whole. Phases: dns, connect and, when a reply is
expected, ttfb (connection up -> first reply byte).
"""
from __future__ import annotations

import asyncio
import functools
from time import perf_counter

from engine.errors import InvalidMonitor
from engine.models import MonitorSpec, ProbeResult
from engine.probes.body import KeywordScan
from engine.probes.connect import connect
from engine.probes.deadline import Deadline
from engine.probes.outcome import Timings, failure, result, short
from engine.probes.resolver import Resolver
from engine.settings import ProbeSettings


@functools.lru_cache(maxsize=4096)
def unescape(text: str) -> bytes:
    """'PING\\r\\n' -> b'PING\\r\\n'; non-ASCII text stays UTF-8; bad escapes -> InvalidMonitor."""
    try:
        return text.encode("utf-8").decode("unicode_escape").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError) as exc:
        raise InvalidMonitor(short(f"invalid escape in {text!r}: {exc.reason}")) from None


class _ReplyProtocol(asyncio.Protocol):
    """Waits for `expect` in the reply; `done` resolves True (found) / False (EOF or limit)."""

    __slots__ = ("scan", "done", "timings")

    def __init__(self, loop: asyncio.AbstractEventLoop, scan: KeywordScan | None,
                 timings: Timings) -> None:
        self.scan = scan
        self.timings = timings
        self.done: asyncio.Future[bool] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.timings.ready = perf_counter()

    def data_received(self, data: bytes) -> None:
        if not self.timings.first_byte:
            self.timings.first_byte = perf_counter()
        if self.scan is not None and not self.done.done() and self.scan.feed(data):
            self.done.set_result(self.scan.found)

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_result(False)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if exc is None:
                self.done.set_result(False)
            else:
                self.done.set_exception(exc)


async def run_tcp(spec: MonitorSpec, settings: ProbeSettings, resolver: Resolver) -> ProbeResult:
    """One TCP check of `spec` (see module docstring)."""
    t0 = perf_counter()
    timings: Timings | None = None
    try:
        host = (spec.host or "").strip().strip("[]")
        if not host or not spec.port or not 1 <= spec.port <= 65535:
            raise InvalidMonitor("tcp monitor needs host and port 1..65535")
        send = unescape(spec.tcp_send) if spec.tcp_send else b""
        expect = unescape(spec.tcp_expect) if spec.tcp_expect else b""
    except InvalidMonitor as exc:
        return result(t0, None, ok=False, kind="invalid", error=str(exc))
    loop = asyncio.get_running_loop()  # once per check: on CPython 3.11 it is a getpid() call
    try:
        async with Deadline(loop, spec.timeout_ms / 1000.0):
            timings = Timings()
            addrs = await resolver.resolve(host, timings)
            scan = KeywordScan(expect, settings.max_body_bytes) if expect else None
            transport, proto = await connect(
                loop, addrs, spec.port, lambda: _ReplyProtocol(loop, scan, timings), timings)
            try:
                if send:
                    transport.write(send)
                if scan is None:
                    return result(t0, timings)
                found = await proto.done
            finally:
                transport.close()  # flushes a pending send; no TLS here to shut down
            if found:
                return result(t0, timings)
            shown = spec.tcp_expect[:80]  # type: ignore[index]
            why = "not in the first %d bytes" % scan.seen if scan.seen >= scan.limit else \
                "before the connection closed"
            return result(t0, timings, ok=False, kind="keyword",
                          error=f"reply did not contain {shown!r} {why}")
    except Exception as exc:  # noqa: BLE001 - every failure becomes a verdict
        return failure(t0, timings, exc, 0, spec.timeout_ms)
