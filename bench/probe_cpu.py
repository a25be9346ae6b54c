"""CPU cost of one probe check, per probe path: process CPU time / checks.

A loopback HTTP and HTTPS server runs in a separate process (so its CPU is not counted); this
process runs `--checks` checks per scenario with `--concurrency` in flight, each check on a new
connection, through the real `Prober` on uvloop, `--repeat` times with the paths interleaved,
and prints one key=value line per path and scenario (minimum and median over the repeats):

    path=lean scenario=https checks=2000 concurrency=50 repeat=5 ok=2000 cpu_us_per_check=812.4 ...

Scenarios: http (GET, status only), https (GET, verified TLS), keyword (GET, 8 KiB body searched),
tcp (connect only). Paths: the Prober's HTTP paths (`--paths aiohttp,lean`) and `raw`, the
floor (bare connect + request + first bytes, no probe logic) to read the others against. Usage:

    .venv/bin/python bench/probe_cpu.py [--checks 2000] [--concurrency 50] [--repeat 5]
                                        [--paths aiohttp,lean] [--scenarios http,https,keyword,tcp]
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from yarl import URL  # noqa: E402

from engine.models import MonitorSpec, ProbeResult  # noqa: E402
from engine.probes import Prober  # noqa: E402
from engine.settings import ProbeSettings  # noqa: E402

PAGE = b"<html>" + b"x" * 8192 + b" all systems operational</html>"
SMALL = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
LARGE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/html\r\n\r\n%s" % (len(PAGE), PAGE)


class _Responder(asyncio.Protocol):
    """Answers one request per connection as soon as the head is in, then closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" in self.buf:
            self.transport.write(LARGE if self.buf.startswith(b"GET /page") else SMALL)
            self.transport.close()

    def eof_received(self) -> bool:
        return False


def _serve(cert_dir: str, ready: multiprocessing.synchronize.Event, ports: multiprocessing.Array) -> None:
    async def main() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(cert_dir, "server.pem"))
        loop = asyncio.get_running_loop()
        plain = await loop.create_server(_Responder, "127.0.0.1", 0, backlog=4096)
        secure = await loop.create_server(_Responder, "127.0.0.1", 0, ssl=ctx, backlog=4096)
        ports[0] = plain.sockets[0].getsockname()[1]
        ports[1] = secure.sockets[0].getsockname()[1]
        ready.set()
        await asyncio.Event().wait()
    uvloop.run(main())


class _RawProtocol(asyncio.Protocol):
    def __init__(self, done: asyncio.Future) -> None:
        self.done = done

    def data_received(self, data: bytes) -> None:
        if not self.done.done():
            self.done.set_result(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(b"")


class RawFloor:
    """The floor, not a probe: connect (TLS verified), write a fixed request, await the first
    bytes, abort. No parsing, phases, policy or deadline — what any path must at least spend."""

    def __init__(self, ca_file: str) -> None:
        self.ctx = ssl.create_default_context(cafile=ca_file)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def check(self, spec: MonitorSpec) -> ProbeResult:
        loop = asyncio.get_running_loop()
        if spec.type == "tcp":
            transport, _ = await loop.create_connection(asyncio.Protocol, spec.host, spec.port)
            transport.abort()
            return ProbeResult(ok=True, latency_ms=0.0)
        url = URL(spec.url)
        done = loop.create_future()
        transport, _ = await loop.create_connection(
            lambda: _RawProtocol(done), url.host, url.port,
            ssl=self.ctx if url.scheme == "https" else None)
        transport.write(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                        % (url.raw_path.encode(), url.host.encode()))
        data = await done
        transport.abort()
        return ProbeResult(ok=data.startswith(b"HTTP/1.1 200"), latency_ms=0.0)


def _make_certs(cert_dir: str) -> str:
    import trustme  # test dependency: the bench needs a CA the probe can verify

    ca = trustme.CA()
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        os.path.join(cert_dir, "server.pem"))
    ca_file = os.path.join(cert_dir, "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    return ca_file


async def _run(prober: Prober, spec: MonitorSpec, checks: int, concurrency: int) -> tuple[int, float, float, dict]:
    counter = iter(range(checks))
    ok = 0
    kinds: dict[str, int] = {}

    async def lane() -> None:
        nonlocal ok
        for _ in counter:
            res = await prober.check(spec)
            if res.ok:
                ok += 1
            else:
                kinds[res.error_kind] = kinds.get(res.error_kind, 0) + 1

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return ok, time.process_time() - cpu0, time.perf_counter() - wall0, kinds


def _spec(scenario: str, ports: tuple[int, int]) -> MonitorSpec:
    http_port, https_port = ports
    if scenario == "tcp":
        return MonitorSpec(id=1, type="tcp", interval_s=60, host="127.0.0.1", port=http_port)
    if scenario == "https":
        return MonitorSpec(id=1, type="http", interval_s=60, url=f"https://127.0.0.1:{https_port}/")
    if scenario == "keyword":
        return MonitorSpec(id=1, type="http", interval_s=60, url=f"http://127.0.0.1:{http_port}/page",
                           keyword="operational")
    return MonitorSpec(id=1, type="http", interval_s=60, url=f"http://127.0.0.1:{http_port}/")


async def bench(args: argparse.Namespace, ports: tuple[int, int], ca_file: str) -> None:
    """Paths are interleaved within each repeat, so load from other processes hits them alike;
    the figure to quote is the minimum over repeats (the median is printed too)."""
    probers: dict[str, Prober] = {}
    for path in args.paths.split(","):
        if path == "raw":
            probers[path] = RawFloor(ca_file)  # type: ignore[assignment]
            continue
        try:
            probers[path] = Prober(ProbeSettings(), cafile=ca_file, http_path=path)
        except ValueError as exc:
            print(f"path={path} skipped={exc}")
            continue
        await probers[path].start()
    first = next(p for name, p in probers.items() if name != "raw")
    try:
        for scenario in args.scenarios.split(","):
            spec = _spec(scenario, ports)
            runs = list(probers) if scenario != "tcp" else ["tcp"] + (["raw"] if "raw" in probers else [])
            cpu: dict[str, list[float]] = {name: [] for name in runs}
            last: dict[str, tuple[int, float, dict]] = {}
            for name in runs:  # warm-up
                await _run(probers.get(name, first), spec, max(50, args.checks // 10), args.concurrency)
            for _ in range(args.repeat):
                for name in runs:
                    ok, used, wall, kinds = await _run(probers.get(name, first), spec, args.checks,
                                                       args.concurrency)
                    cpu[name].append(used / args.checks * 1e6)
                    last[name] = (ok, wall, kinds)
            for name in runs:
                ok, wall, kinds = last[name]
                failed = " ".join(f"failed_{k}={v}" for k, v in sorted(kinds.items()))
                print(f"path={name} scenario={scenario} checks={args.checks} "
                      f"concurrency={args.concurrency} repeat={args.repeat} ok={ok} "
                      f"cpu_us_per_check={min(cpu[name]):.1f} "
                      f"cpu_us_per_check_median={statistics.median(cpu[name]):.1f} "
                      f"checks_per_s={args.checks / wall:.0f} {failed}".rstrip(), flush=True)
    finally:
        for prober in probers.values():
            await prober.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--paths", default="aiohttp,lean,raw",
                        help="Prober HTTP paths, and 'raw': the bare connect+request floor")
    parser.add_argument("--scenarios", default="http,https,keyword,tcp")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cert_dir:
        ca_file = _make_certs(cert_dir)
        mp = multiprocessing.get_context("spawn")
        ready, ports = mp.Event(), mp.Array("i", 2)
        server = mp.Process(target=_serve, args=(cert_dir, ready, ports), daemon=True)
        server.start()
        try:
            if not ready.wait(10):
                raise SystemExit("bench server did not start")
            print(f"python={sys.version.split()[0]} cpus={os.cpu_count()} loop=uvloop", flush=True)
            uvloop.run(bench(args, (ports[0], ports[1]), ca_file))
        finally:
            server.terminate()
            server.join(5)


if __name__ == "__main__":
    main()
