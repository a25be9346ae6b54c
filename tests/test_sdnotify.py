"""systemd notify protocol with a real engine and a real notify socket (as systemd's): READY=1
only once every worker has booted, WATCHDOG=1 at half the watchdog interval, RELOADING=1 then
READY=1 around a SIGHUP, STOPPING=1 on SIGTERM."""
from __future__ import annotations

import asyncio
import signal
import socket
import time


class NotifySocket:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.got: list[tuple[float, dict[str, str]]] = []

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            self.got.append((time.monotonic(), dict(f.split("=", 1) for f in data.decode().split("\n"))))

    async def wait(self, key: str, after: float = 0.0, timeout: float = 20) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain()
            for at, msg in self.got:
                if key in msg and at >= after:
                    return at
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {key} within {timeout} s: {self.got}")


async def test_systemd_notify_ready_watchdog_reload_stop(engine, tmp_path):
    sock = NotifySocket(str(tmp_path / "notify"))
    proc = engine("run", "--workers", "2", NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="1000000")
    ready = await sock.wait("READY")
    log = proc.output()
    assert "worker 0 is ready" in log and "worker 1 is ready" in log  # both booted before READY
    (status,) = [m["STATUS"] for _, m in sock.got if "READY" in m]
    assert status.startswith("2 workers checking")

    await asyncio.sleep(3)
    sock.drain()
    pings = [at for at, m in sock.got if "WATCHDOG" in m and at > ready]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert len(pings) >= 4 and max(gaps) < 0.9, gaps  # every 0.5 s (half of 1 s), never late

    hup = time.monotonic()
    proc.proc.send_signal(signal.SIGHUP)
    reloading = await sock.wait("RELOADING", after=hup)
    (reload_msg,) = [m for _, m in sock.got if "RELOADING" in m]
    assert int(reload_msg["MONOTONIC_USEC"]) > 0
    assert await sock.wait("READY", after=reloading) >= reloading

    term = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    await sock.wait("STOPPING", after=term, timeout=5)
    assert await proc.stop() == 0


async def test_without_notify_socket_nothing_is_sent(engine, tmp_path):
    """No NOTIFY_SOCKET: the engine runs as before (no error, nothing logged about systemd)."""
    proc = engine("run", "--workers", "1")
    await proc.wait_for_log("worker 0 is ready")
    await asyncio.sleep(1)
    assert await proc.stop() == 0
    assert "systemd" not in proc.output()
