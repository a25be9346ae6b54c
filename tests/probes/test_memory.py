"""A worker's memory stays bounded under many hostile targets at once: endless bodies, endless
header streams and 10,000-header responses, each checked hundreds of times concurrently."""
from __future__ import annotations

import asyncio
import gc

from tests.probes.conftest import read_request
from tests.probes.helpers import http


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def endless(head: bytes, block: bytes):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(head)
        while True:  # ~13 MB/s per connection of 64 KiB blocks: endless, yet leaves the loop room
            writer.write(block)
            await writer.drain()
            await asyncio.sleep(0.005)
    return handler


async def test_memory_stays_bounded_under_hostile_targets(serve, make_prober):
    prober = await make_prober(max_body_bytes=65536, max_header_bytes=65536)
    body = await serve(endless(b"HTTP/1.1 200 OK\r\n\r\n", b"y" * 65536))
    headers = await serve(endless(b"HTTP/1.1 200 OK\r\n", b"X-Endless: " + b"h" * 65536 + b"\r\n"))
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    ten_k = await serve(endless(b"HTTP/1.1 200 OK\r\n" + many, b"X: " + b"y" * 65536 + b"\r\n"))
    specs = [http(body.url(), keyword="needle", timeout_ms=1000), http(headers.url(), timeout_ms=1000),
             http(ten_k.url(), timeout_ms=1000)]

    async def round_() -> list:
        return await asyncio.gather(*(prober.check(specs[i % 3]) for i in range(150)))

    await round_()  # warm-up: pools, caches, allocator arenas
    gc.collect()
    before = rss_mb()
    for _ in range(2):
        results = await round_()
        # Under this much hostile traffic in one loop some checks reach their deadline first.
        assert all(not r.ok and r.error_kind in ("keyword", "protocol", "timeout") for r in results), \
            {r.error_kind for r in results}
    gc.collect()
    grown = rss_mb() - before
    # Unbounded reads would hold ~150 x (megabytes per second of stream) here; bounded ones hold
    # at most 150 x 64 KiB = 10 MiB at a time, all released after each round.
    print(f"\nRSS growth over 2 x 150 hostile checks: {grown:.1f} MiB")
    assert grown < 40, f"RSS grew {grown:.1f} MiB"
