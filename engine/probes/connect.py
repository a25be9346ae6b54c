"""Opening one fresh connection for a probe, with TCP and TLS marked separately on `Timings`.

`connect()` tries the (already policy-checked) addresses in order until one accepts, so a host
whose first address refuses or is unreachable is still reached through the next. It owns the
socket until the transport exists, so a deadline or an error never leaks a file descriptor.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from time import perf_counter
from typing import TypeVar

from engine.probes.outcome import Timings
from engine.probes.resolver import Addr

P = TypeVar("P", bound=asyncio.BaseProtocol)


async def connect(addrs: list[Addr], port: int, factory: Callable[[], P], timings: Timings,
                  ssl_ctx: ssl.SSLContext | None = None,
                  server_hostname: str | None = None) -> tuple[asyncio.Transport, P]:
    """Connect to the first address that accepts; raise the last OSError if none does.

    The protocol should set `timings.ready` in `connection_made`: data can arrive (and mark
    `first_byte`) before this coroutine resumes.
    """
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    for family, ip in addrs:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, (ip, port))
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        timings.connected = perf_counter()
        try:
            transport, proto = await loop.create_connection(
                factory, sock=sock, ssl=ssl_ctx,
                server_hostname=server_hostname if ssl_ctx is not None else None)
        except BaseException:
            sock.close()
            raise
        if not timings.ready:  # the protocol may have marked it in connection_made already
            timings.ready = perf_counter()
        if ssl_ctx is not None:
            timings.ssl_object = transport.get_extra_info("ssl_object")
        return transport, proto  # type: ignore[return-value]
    assert last is not None
    raise last
