"""CPU per plain-HTTP check on uvloop for ways of opening the connection, against the target fleet.

Two ways of connecting: two steps (socket + `loop.sock_connect`, then
`loop.create_connection(sock=...)`) and one `loop.create_connection(factory, ip, port)`, which
uvloop runs in C; the protocol's `connection_made` marks the moment the TCP handshake completed.
The engine's probes use the one-step call (`engine.probes.connect`; for TLS the connected mark
comes from `TimedContext.wrap_bio`). `engine-prober` is the engine's whole `Prober.check`, to
read against `one-step`, the floor of a check. Each way runs `--repeat` times, interleaved, and
is reported as process CPU time per check, minimum and median over the repeats:

    python -m bench.connect_cost [--checks 20000] [--concurrency 200] [--repeat 3]

    way=one-step checks=20000 ok=20000 ... cpu_us_per_check=... cpu_us_per_check_median=...
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
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


async def run(way: str, endpoints: list[tuple[str, int]], checks: int,
              concurrency: int) -> tuple[int, float, float, float]:
    """(ok, CPU s, system CPU s, wall s) of `checks` checks done `way`."""
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
    counter = iter(range(checks))
    ok = 0

    async def lane() -> None:  # `concurrency` lanes, not one task per check: 20,000 waiting
        nonlocal ok            # tasks would cost CPU (and GC passes) that no way needs
        for i in counter:
            good = await one(i)  # not `ok += await ...`: that reads ok before the await
            ok += bool(good)

    t = os.times()
    wall = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    wall = time.perf_counter() - wall
    t2 = os.times()
    cpu = (t2.user - t.user) + (t2.system - t.system)
    if way == "engine-prober":
        await prober.close()
    return ok, cpu, t2.system - t.system, wall


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.connect_cost")
    p.add_argument("--checks", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--ways", default="two-step,one-step,engine-prober")
    p.add_argument("--repeat", type=int, default=3, help="runs per way, interleaved; min is quoted")
    args = p.parse_args()
    ways = args.ways.split(",")
    cfg = FleetConfig(addresses=16, ports=4, procs=1, kinds=("http",))
    runs: dict[str, list[tuple[int, float, float, float]]] = {way: [] for way in ways}
    with Fleet(cfg):
        for _ in range(args.repeat):
            for way in ways:
                runs[way].append(uvloop.run(run(way, cfg.endpoints("http"), args.checks,
                                                args.concurrency)))
    for way in ways:
        ok, cpu, sys_cpu, wall = min(runs[way], key=lambda r: r[1])
        median = statistics.median(r[1] for r in runs[way])
        print(f"way={way} checks={args.checks} ok={ok} concurrency={args.concurrency} "
              f"repeat={args.repeat} cpu_us_per_check={cpu / args.checks * 1e6:.1f} "
              f"cpu_us_per_check_median={median / args.checks * 1e6:.1f} "
              f"sys_share={sys_cpu / cpu:.2f} checks_per_cpu_s={args.checks / cpu:.0f} "
              f"wall_per_s={args.checks / wall:.0f}", flush=True)


if __name__ == "__main__":
    main()
