"""A finished lean-path or TCP check leaves no reference cycle: everything it made is freed by
refcount when it ends, so the cyclic GC (once ≈9 % of a check's CPU) has nothing to find.
Covers ok checks and the common failures, plain and TLS."""
from __future__ import annotations

import asyncio
import collections
import gc
import socket

import pytest
import uvloop

from tests.probes.helpers import http, tcp, verdict

RESPONSES = {
    b"/": b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world",
    b"/500": b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
    b"/bad": b"HTTP/1.1 abc\r\n\r\n",
    b"/loop": b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n",
}


class _Answer(asyncio.Protocol):
    """A bare Protocol server (asyncio streams make cycles of their own): answers by path."""

    def connection_made(self, transport) -> None:
        self.transport, self.buf = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" in self.buf:
            path = self.buf.split(b" ", 2)[1]
            if path == b"/silent":
                return
            self.transport.write(RESPONSES[path])
            self.transport.close()


@pytest.fixture
def http_path() -> str:
    return "lean"  # aiohttp's own objects are not ours to keep acyclic


async def test_checks_leave_no_cycles(prober, tls):
    loop = asyncio.get_running_loop()
    if not isinstance(loop, uvloop.Loop):  # the workers' loop; the stdlib's transports are cyclic
        pytest.skip("stdlib selector transports hold reference cycles of their own")
    plain = await loop.create_server(_Answer, "127.0.0.1", 0)
    secure = await loop.create_server(_Answer, "127.0.0.1", 0, ssl=tls["good"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    p, s = plain.sockets[0].getsockname()[1], secure.sockets[0].getsockname()[1]
    cases = [
        (http(f"http://127.0.0.1:{p}/"), True, ""),
        (http(f"http://127.0.0.1:{p}/", keyword="world"), True, ""),
        (http(f"https://127.0.0.1:{s}/"), True, ""),
        (http(f"http://127.0.0.1:{p}/500"), False, "http_status"),
        (http(f"http://127.0.0.1:{p}/bad"), False, "protocol"),
        (http(f"https://127.0.0.1:{s}/bad"), False, "protocol"),
        (http(f"http://127.0.0.1:{p}/loop"), False, "too_many_redirects"),
        (http(f"http://127.0.0.1:{p}/silent", timeout_ms=100), False, "timeout"),
        (http(f"http://127.0.0.1:{closed}/"), False, "refused"),
        (http("http://nowhere.invalid/"), False, "dns"),
        (tcp("127.0.0.1", p), True, ""),
        (tcp("127.0.0.1", closed), False, "refused"),
    ]
    try:
        for spec, ok, kind in cases:
            await verdict(prober, spec, ok, kind)  # warm-up: caches, first-use imports
            await asyncio.sleep(0.01)  # let the closed connections' callbacks run
            gc.collect()
            gc.disable()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                for _ in range(5):
                    await verdict(prober, spec, ok, kind)
                await asyncio.sleep(0.01)
                gc.collect()
                found = collections.Counter(type(o).__name__ for o in gc.garbage)
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.enable()
            assert not found, (spec, found.most_common(8))
    finally:
        plain.close()
        secure.close()


def test_error_text_is_one_line_without_nul():
    """Error texts land in PostgreSQL text columns, which refuse NUL: a whole status batch would
    fail with it."""
    from engine.probes.outcome import short
    assert short("bad\x00byte\r\n  next line\tend") == "bad\\x00byte next line end"
