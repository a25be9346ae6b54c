"""The target fleet: cheap HTTP, HTTPS and TCP listeners on many loopback addresses and ports.

One address:port takes only about 470 new connections a second before the client runs out of
ephemeral ports (28,000 ports / 60 s of TIME_WAIT), so the fleet listens on `addresses` x `ports`
endpoints per kind, and the bench spreads monitors over them. Every fleet process binds every
endpoint with SO_REUSEPORT, so the kernel spreads connections over the processes.

Each connection answers one request and closes (the engine opens a new connection per check).
Per-request knobs ride in the path, so one fleet serves every scenario:

    /                         fleet defaults (--latency-ms, --fail-rate, --body-bytes)
    /s/503                    answer with this status
    /d/250                    answer after 250 ms
    /b/4096                   body of this many bytes
    /s/503/d/250/b/4096       any combination

Servers are raw asyncio Protocols on uvloop: no HTTP framework, responses built once and cached.
HTTPS certificates come from trustme (an ECDSA CA and one leaf naming every address); the server
offers TLS 1.3 only and issues no session tickets, so every connection is a full handshake (the
engine never resumes sessions either). Run one process by hand:

    python -m bench.targets --addresses 8 --ports 2 --procs 2
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

FIRST_ADDRESS = 10          # 127.0.0.10, 127.0.0.11, ...
BASE_PORTS = {"http": 21000, "https": 22000, "tcp": 23000}
_REASONS = {200: "OK", 301: "Moved Permanently", 302: "Found", 404: "Not Found",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass
class FleetConfig:
    addresses: int = 16           # 127.0.0.10 .. 127.0.0.(10 + addresses - 1)
    ports: int = 4                # per kind and address
    procs: int = 2                # server processes (SO_REUSEPORT)
    kinds: tuple[str, ...] = ("http", "https", "tcp")
    latency_ms: tuple[int, int] = (0, 0)   # default answer delay, uniform in [lo, hi]
    fail_rate: float = 0.0        # default share of requests answered 503
    body_bytes: int = 2           # default body size
    cert_dir: str = ""            # trustme CA + leaf (made if missing)
    tls_resume: bool = False      # True: OpenSSL defaults (TLS 1.2 too, session tickets)

    def hosts(self) -> list[str]:
        return [f"127.0.0.{FIRST_ADDRESS + i}" for i in range(self.addresses)]

    def endpoints(self, kind: str) -> list[tuple[str, int]]:
        base = BASE_PORTS[kind]
        return [(h, base + p) for p in range(self.ports) for h in self.hosts()]

    def urls(self, kind: str) -> list[str]:
        scheme = "https" if kind == "https" else "http"
        return [f"{scheme}://{h}:{p}" for h, p in self.endpoints(kind)]


def make_certs(cert_dir: str | Path, hosts: list[str]) -> tuple[str, str]:
    """trustme CA and a leaf for every address. Returns (ca.pem, server.pem) paths; reuses them
    when they already name the same hosts."""
    import trustme

    d = Path(cert_dir)
    d.mkdir(parents=True, exist_ok=True)
    ca_path, leaf_path, names = d / "ca.pem", d / "server.pem", d / "hosts.json"
    if ca_path.exists() and leaf_path.exists() and names.exists() and json.loads(names.read_text()) == hosts:
        return str(ca_path), str(leaf_path)
    ca = trustme.CA()
    leaf = ca.issue_cert(*hosts)
    ca.cert_pem.write_to_path(str(ca_path))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(leaf_path))
    names.write_text(json.dumps(hosts))
    return str(ca_path), str(leaf_path)


def ca_bundle(cert_dir: str | Path) -> str:
    """A CA file holding the system CAs plus the fleet's CA: point the engine's SSL_CERT_FILE at it
    so its verifying context trusts the fleet without any change to the engine."""
    d = Path(cert_dir)
    bundle = d / "bundle.pem"
    system = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    parts = [system.read_bytes()] if system.exists() else []
    bundle.write_bytes(b"".join(parts) + (d / "ca.pem").read_bytes())
    return str(bundle)


# -- the server side ---------------------------------------------------------------------------
class Plan:
    """Parses the knobs in a request path into (response bytes, delay seconds); cached."""

    def __init__(self, cfg: FleetConfig) -> None:
        self.cfg = cfg
        self.responses: dict[tuple[int, int], bytes] = {}
        self.paths: dict[bytes, tuple[int | None, float | None, int | None]] = {}
        self.rand = random.random

    def response(self, status: int, size: int) -> bytes:
        key = (status, size)
        r = self.responses.get(key)
        if r is None:
            body = (b"ok" * (size // 2 + 1))[:size]
            r = (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                 b"Connection: close\r\n\r\n" % (status, _REASONS.get(status, "Status").encode(), size)) + body
            self.responses[key] = r
        return r

    def parse(self, path: bytes) -> tuple[int | None, float | None, int | None]:
        knobs = self.paths.get(path)
        if knobs is None:
            status = delay = size = None
            parts = path.split(b"?", 1)[0].strip(b"/").split(b"/")
            try:
                for name, value in zip(parts[0::2], parts[1::2]):
                    if name == b"s":
                        status = int(value)
                    elif name == b"d":
                        delay = int(value) / 1000
                    elif name == b"b":
                        size = min(int(value), 16 << 20)
            except ValueError:
                status = 404
            knobs = (status, delay, size)
            if len(self.paths) < 100_000:
                self.paths[path] = knobs
        return knobs

    def __call__(self, path: bytes) -> tuple[bytes, float]:
        status, delay, size = self.parse(path)
        cfg = self.cfg
        if status is None:
            status = 503 if cfg.fail_rate and self.rand() < cfg.fail_rate else 200
        if delay is None:
            lo, hi = cfg.latency_ms
            delay = (lo + (hi - lo) * self.rand()) / 1000 if hi else lo / 1000
        return self.response(status, cfg.body_bytes if size is None else size), delay


class HttpTarget(asyncio.Protocol):
    """One request per connection: answer as soon as the request head is in, then close."""

    __slots__ = ("transport", "buf", "plan", "loop")

    def __init__(self, plan: Plan, loop: asyncio.AbstractEventLoop) -> None:
        self.plan = plan
        self.loop = loop
        self.buf = b""
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if b"\r\n\r\n" not in buf:
            self.buf = buf
            if len(buf) > 65536:
                self.transport.close()
            return
        self.buf = b""
        line = buf[:buf.find(b"\r\n")].split(b" ", 2)
        response, delay = self.plan(line[1] if len(line) > 1 else b"/")
        if delay > 0:
            self.loop.call_later(delay, self.reply, response)
        else:
            self.reply(response)

    def reply(self, response: bytes) -> None:
        t = self.transport
        if not t.is_closing():
            t.write(response)
            t.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc) -> None:
        self.transport = _Closed


class _ClosedTransport:
    def is_closing(self) -> bool:
        return True


_Closed = _ClosedTransport()


class TcpTarget(asyncio.Protocol):
    """Accepts and closes at once (a TCP check only needs the handshake)."""

    def connection_made(self, transport) -> None:
        transport.close()


def serve(cfg: FleetConfig) -> None:
    """One fleet process: bind every endpoint (SO_REUSEPORT), print 'ready', serve until SIGTERM."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        plan = Plan(cfg)
        ctx = None
        if "https" in cfg.kinds:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(os.path.join(cfg.cert_dir, "server.pem"))
            if not cfg.tls_resume:
                ctx.minimum_version = ssl.TLSVersion.TLSv1_3
                ctx.num_tickets = 0
            ctx.set_alpn_protocols(["http/1.1"])
        servers = []
        for kind in cfg.kinds:
            for host, port in cfg.endpoints(kind):
                factory = TcpTarget if kind == "tcp" else (lambda: HttpTarget(plan, loop))
                servers.append(await loop.create_server(
                    factory, host, port, reuse_port=True, backlog=4096,
                    ssl=ctx if kind == "https" else None,
                    ssl_handshake_timeout=10 if kind == "https" else None))
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print("ready", flush=True)
        await stop.wait()
        for s in servers:
            s.close()

    uvloop.run(main())


# -- the client side: start and stop a fleet ---------------------------------------------------
@dataclass
class Fleet:
    cfg: FleetConfig
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def start(self, timeout: float = 20.0) -> "Fleet":
        if "https" in self.cfg.kinds:
            make_certs(self.cfg.cert_dir, self.cfg.hosts())
        args = [sys.executable, "-m", "bench.targets", "--serve", json.dumps(asdict(self.cfg))]
        root = str(Path(__file__).resolve().parent.parent)
        for _ in range(self.cfg.procs):
            self.procs.append(subprocess.Popen(args, cwd=root, stdout=subprocess.PIPE, text=True))
        deadline = time.monotonic() + timeout
        for p in self.procs:
            line = p.stdout.readline() if time.monotonic() < deadline else ""
            if line.strip() != "ready":
                self.stop()
                raise RuntimeError("target fleet did not start (ports taken? see stderr above)")
        return self

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()

    def __enter__(self) -> "Fleet":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.targets", description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", help=argparse.SUPPRESS)  # internal: one fleet process, JSON config
    p.add_argument("--addresses", type=int, default=16)
    p.add_argument("--ports", type=int, default=4)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--latency-ms", default="0", help="LO or LO-HI, uniform")
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--body-bytes", type=int, default=2)
    p.add_argument("--cert-dir", default="bench/out/certs")
    p.add_argument("--tls-resume", action="store_true", help="allow TLS 1.2 and session tickets")
    args = p.parse_args(argv)
    if args.serve:
        raw = json.loads(args.serve)
        raw["kinds"], raw["latency_ms"] = tuple(raw["kinds"]), tuple(raw["latency_ms"])
        serve(FleetConfig(**raw))
        return 0
    lo, _, hi = args.latency_ms.partition("-")
    cfg = FleetConfig(args.addresses, args.ports, args.procs, latency_ms=(int(lo), int(hi or lo)),
                      fail_rate=args.fail_rate, body_bytes=args.body_bytes,
                      cert_dir=str(Path(args.cert_dir).resolve()), tls_resume=args.tls_resume)
    with Fleet(cfg) as fleet:
        print(f"fleet up (pids {fleet.pids}): {len(cfg.endpoints('http'))} endpoints per kind, e.g. "
              f"{cfg.urls('http')[0]} {cfg.urls('https')[0]} tcp {cfg.endpoints('tcp')[0]}; Ctrl-C stops")
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    return 0


if __name__ == "__main__":
    sys.exit(main())
