"""CPU per plain-HTTP check on uvloop for ways of opening the connection, against the target fleet.

The engine's probes connect in two steps (socket + `loop.sock_connect`, then
`loop.create_connection(sock=...)`) so the TCP and TLS phases are timed apart. For plain HTTP
one `loop.create_connection(factory, ip, port)` does the same in uvloop's C code, and the
protocol's `connection_made` marks the moment the TCP handshake completed. This program measures
both (and the engine's own `Prober.check` for reference), each as process CPU time per check:

    python -m bench.connect_cost [--checks 20000] [--concurrency 200]

    way=two-step checks=20000 ok=20000 cpu_us_per_check=... checks_per_cpu_s=...
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import time

import uvloop

from bench.targets import Fleet, FleetConfig

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nConnection: close\r\n\r\n"


class _Get(asyncio.Protocol):
    __slots__ = ("done", "got", "t")

    def __init__(self, done: asyncio.Future) -> None:
        self.done = done
        self.got = b""

    def connection_made(self, transport) -> None:
        self.t = time.perf_counter()  # plain TCP: the handshake just completed
        transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        self.got += data

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(self.got.startswith(b"HTTP/1.1 200"))


async def two_step(loop, ip: str, port: int) -> bool:
    done = loop.create_future()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await loop.sock_connect(sock, (ip, port))
    await loop.create_connection(lambda: _Get(done), sock=sock)
    return await done


async def one_step(loop, ip: str, port: int) -> bool:
    done = loop.create_future()
    await loop.create_connection(lambda: _Get(done), ip, port)
    return await done


async def run(way: str, endpoints: list[tuple[str, int]], checks: int, concurrency: int) -> str:
    loop = asyncio.get_running_loop()
    if way == "engine-prober":
        from engine.models import MonitorSpec
        from engine.probes import Prober
        from engine.settings import ProbeSettings
        prober = Prober(ProbeSettings())
        await prober.start()
        specs = [MonitorSpec(id=i, type="http", interval_s=60, url=f"http://{ip}:{port}/")
                 for i, (ip, port) in enumerate(endpoints)]

        async def one(i: int) -> bool:
            return (await prober.check(specs[i % len(specs)])).ok
    else:
        fn = two_step if way == "two-step" else one_step

        async def one(i: int) -> bool:
            ip, port = endpoints[i % len(endpoints)]
            return await fn(loop, ip, port)
    sem = asyncio.Semaphore(concurrency)
    ok = 0

    async def guarded(i: int) -> None:
        nonlocal ok
        async with sem:
            good = await one(i)
        ok += bool(good)

    t = os.times()
    wall = time.perf_counter()
    await asyncio.gather(*(guarded(i) for i in range(checks)))
    wall = time.perf_counter() - wall
    t2 = os.times()
    cpu = (t2.user - t.user) + (t2.system - t.system)
    if way == "engine-prober":
        await prober.close()
    return (f"way={way} checks={checks} ok={ok} concurrency={concurrency} "
            f"cpu_us_per_check={cpu / checks * 1e6:.1f} sys_share={(t2.system - t.system) / cpu:.2f} "
            f"checks_per_cpu_s={checks / cpu:,.0f} wall_per_s={checks / wall:,.0f}").replace(",", "")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.connect_cost")
    p.add_argument("--checks", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--ways", default="two-step,one-step,engine-prober")
    args = p.parse_args()
    cfg = FleetConfig(addresses=16, ports=4, procs=1, kinds=("http",))
    with Fleet(cfg):
        for way in args.ways.split(","):
            print(uvloop.run(run(way, cfg.endpoints("http"), args.checks, args.concurrency)), flush=True)


if __name__ == "__main__":
    main()
