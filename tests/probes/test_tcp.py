"""TCP checks: open, closed, send/expect, silence, IPv6."""
from __future__ import annotations

import asyncio
import socket

import pytest

from tests.probes.helpers import tcp, verdict


@pytest.fixture
def http_path() -> str:
    return "lean"  # TCP checks do not depend on the HTTP path


async def test_open_port(serve, prober):
    async def handler(reader, writer):
        await asyncio.sleep(0.2)
    srv = await serve(handler)
    res = await verdict(prober, tcp("127.0.0.1", srv.port), True)
    assert res.connect_ms is not None and res.dns_ms is None and res.ttfb_ms is None
    res = await verdict(prober, tcp("localhost", srv.port), True)
    assert res.dns_ms is not None


async def test_closed_port(prober):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    await verdict(prober, tcp("127.0.0.1", port), False, "refused")


async def echo_upper(reader, writer):
    line = await reader.readuntil(b"\r\n")
    writer.write(b"+" + line.upper())
    await writer.drain()
    await asyncio.sleep(0.2)


async def test_send_expect(serve, prober):
    srv = await serve(echo_upper)
    res = await verdict(prober, tcp("127.0.0.1", srv.port, tcp_send="ping\\r\\n", tcp_expect="+PING"), True)
    assert res.ttfb_ms is not None


async def test_expect_banner_without_send(serve, prober):
    async def banner(reader, writer):
        writer.write(b"220 smtp.example ESMTP ready\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
    srv = await serve(banner)
    await verdict(prober, tcp("127.0.0.1", srv.port, tcp_expect="220 "), True)


async def test_expect_mismatch_then_close(serve, prober):
    async def wrong(reader, writer):
        writer.write(b"-ERR unknown\r\n")
        await writer.drain()
        writer.close()
    srv = await serve(wrong)
    res = await verdict(prober, tcp("127.0.0.1", srv.port, tcp_expect="+PONG"), False, "keyword")
    assert "+PONG" in res.error


async def test_expect_from_silent_server_times_out(serve, prober):
    async def silent(reader, writer):
        await asyncio.sleep(5)
    srv = await serve(silent)
    res = await verdict(prober, tcp("127.0.0.1", srv.port, tcp_expect="x", timeout_ms=700), False, "timeout")
    assert res.error == "timed out after 700 ms waiting for response"


async def test_ipv6(serve, prober):
    async def handler(reader, writer):
        await asyncio.sleep(0.2)
    srv = await serve(handler, host="::1")
    await verdict(prober, tcp("::1", srv.port), True)
    await verdict(prober, tcp("[::1]", srv.port), True)


async def test_unresolvable(prober):
    await verdict(prober, tcp("nonexistent.invalid", 80), False, "dns")


@pytest.mark.parametrize("fields", [
    {"host": "", "port": 80}, {"host": "127.0.0.1", "port": 0}, {"host": "127.0.0.1", "port": 70000},
    {"host": "127.0.0.1", "port": 80, "tcp_send": "bad\\x"},
])
async def test_invalid(prober, fields):
    host, port = fields.pop("host"), fields.pop("port")
    await verdict(prober, tcp(host, port, **fields), False, "invalid")
