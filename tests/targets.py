"""A small target server on loopback for pipeline tests (real sockets, aiohttp.web)."""
from __future__ import annotations

import asyncio
import socket

from aiohttp import web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_target(slow_s: float = 5.0) -> tuple[web.AppRunner, int]:
    async def ok(_):
        return web.Response(text="hello, the quick brown fox")

    async def unavailable(_):
        return web.Response(status=503, text="down for maintenance")

    async def slow(_):
        await asyncio.sleep(slow_s)
        return web.Response(text="late")

    async def hop(request):
        n = int(request.match_info["n"])
        raise web.HTTPFound("/ok" if n <= 0 else f"/hop/{n - 1}")

    app = web.Application()
    app.add_routes([web.get("/ok", ok), web.get("/503", unavailable), web.get("/slow", slow),
                    web.get("/hop/{n}", hop)])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port
