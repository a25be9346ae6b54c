"""Hostile targets on loopback: real sockets, scripted misbehaviour, trustme certificates.

Every probe test runs on uvloop (what the workers run; UE_TEST_PROBE_LOOP=asyncio for the
stdlib loop) and against every HTTP path of the Prober (`http_path` parameter), so the lean
path is adopted only because it passes the same suite as aiohttp.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable

import pytest
import trustme
import uvloop

from engine.probes import Prober
from engine.settings import ProbeSettings

HTTP_PATHS = ["aiohttp", "lean"]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def pytest_asyncio_loop_factories(config, item):
    if os.environ.get("UE_TEST_PROBE_LOOP") == "asyncio":  # the stdlib loop, on request
        return {"asyncio": asyncio.new_event_loop}
    return {"uvloop": uvloop.new_event_loop}


async def read_request(reader: asyncio.StreamReader) -> tuple[str, bytes, bytes]:
    """(request line, raw head, body by Content-Length) of one request."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return head.split(b"\r\n", 1)[0].decode(), head, body


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Server:
    """One scripted loopback server; counts the connections it accepted."""

    def __init__(self, handler: Handler, host: str, ssl_ctx: ssl.SSLContext | None) -> None:
        self.handler, self.host, self.ssl_ctx = handler, host, ssl_ctx
        self.connections = 0
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> Server:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.ssl_ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._tasks.add(asyncio.current_task())
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError,
                asyncio.CancelledError):
            pass  # hostile servers end abruptly, and are cancelled at teardown
        finally:
            self._tasks.discard(asyncio.current_task())
            writer.transport.abort()

    def url(self, path: str = "/", host: str | None = None) -> str:
        scheme = "https" if self.ssl_ctx else "http"
        host = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"{scheme}://{host}:{self.port}{path}"

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def serve():
    """serve(handler, host='127.0.0.1', ssl=None) -> started Server; all closed at teardown."""
    servers: list[Server] = []

    async def start(handler: Handler, host: str = "127.0.0.1",
                    ssl: ssl.SSLContext | None = None) -> Server:
        server = await Server(handler, host, ssl).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def _server_ctx(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    return ctx


@pytest.fixture(scope="session")
def tls(ca) -> dict[str, ssl.SSLContext]:
    """Server contexts: good, expired, wrong_host (trusted CA) and self_signed (untrusted CA)."""
    now = dt.datetime.now(dt.timezone.utc)
    names = ("localhost", "127.0.0.1", "::1")
    return {
        "good": _server_ctx(ca.issue_cert(*names)),
        "expired": _server_ctx(ca.issue_cert(*names, not_before=now - dt.timedelta(days=30),
                                             not_after=now - dt.timedelta(days=2))),
        "wrong_host": _server_ctx(ca.issue_cert("example.org")),
        "self_signed": _server_ctx(trustme.CA().issue_cert(*names)),
    }


@pytest.fixture(params=HTTP_PATHS)
def http_path(request) -> str:
    return request.param


@pytest.fixture
async def make_prober(http_path, ca_file):
    """make_prober(**ProbeSettings fields) -> started Prober on this test's HTTP path."""
    probers: list[Prober] = []

    async def make(**fields) -> Prober:
        prober = Prober(ProbeSettings(**fields), cafile=ca_file, http_path=http_path)
        await prober.start()
        probers.append(prober)
        return prober

    yield make
    for prober in probers:
        await prober.close()


@pytest.fixture
async def prober(make_prober) -> Prober:
    return await make_prober()

