"""CPU cost of one probe check, per probe path: process CPU time / checks.

A loopback HTTP and HTTPS server runs in a separate process (so its CPU is not counted); this
process runs `--checks` checks per scenario with `--concurrency` in flight, each check on a new
connection, through the real `Prober` on uvloop, and prints one key=value line per scenario:

    path=aiohttp scenario=https checks=3000 concurrency=50 ok=3000 cpu_us_per_check=812.4 ...

Scenarios: http (GET, status only), https (GET, verified TLS), keyword (GET, 8 KiB body searched),
tcp (connect only). Paths: the Prober's HTTP paths (`--paths aiohttp,lean`). Usage:

    .venv/bin/python bench/probe_cpu.py [--checks 3000] [--concurrency 50] [--paths aiohttp,lean]
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.models import MonitorSpec  # noqa: E402
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
    for path in args.paths.split(","):
        try:
            prober = Prober(ProbeSettings(), cafile=ca_file, http_path=path)
        except ValueError as exc:
            print(f"path={path} skipped={exc}")
            continue
        await prober.start()
        try:
            for scenario in args.scenarios.split(","):
                if scenario == "tcp" and path != args.paths.split(",")[0]:
                    continue  # the TCP probe does not depend on the HTTP path
                spec = _spec(scenario, ports)
                await _run(prober, spec, max(50, args.checks // 10), args.concurrency)  # warm-up
                ok, cpu, wall, kinds = await _run(prober, spec, args.checks, args.concurrency)
                label = "tcp" if scenario == "tcp" else path
                failed = " ".join(f"failed_{k}={v}" for k, v in sorted(kinds.items()))
                print(f"path={label} scenario={scenario} checks={args.checks} "
                      f"concurrency={args.concurrency} ok={ok} "
                      f"cpu_us_per_check={cpu / args.checks * 1e6:.1f} "
                      f"checks_per_s={args.checks / wall:.0f} wall_s={wall:.2f} {failed}".rstrip(),
                      flush=True)
        finally:
            await prober.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--paths", default="aiohttp,lean")
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
