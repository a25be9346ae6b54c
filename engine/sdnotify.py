"""systemd's notify protocol (sd_notify(3)) in a few lines, no libsystemd: under `Type=notify`
the supervisor says READY=1 once every worker has booted, RELOADING=1 / READY=1 around a SIGHUP
replacement, STOPPING=1 on SIGTERM, a STATUS= line, and WATCHDOG=1 while its loop turns (with
`WatchdogSec=`, systemd restarts a supervisor that hangs). Without NOTIFY_SOCKET every call is a
no-op, so the same code runs under any other process manager.
"""
from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("engine.supervisor")


class Notifier:
    def __init__(self, environ: dict[str, str] | os._Environ = os.environ) -> None:
        addr = environ.get("NOTIFY_SOCKET", "")
        self.addr = "\0" + addr[1:] if addr.startswith("@") else addr  # '@' = abstract namespace
        usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        mine = not pid or (pid.isdigit() and int(pid) == os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and mine else 0.0
        self._sock: socket.socket | None = None
        self._last_ping = 0.0
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self.addr)

    def send(self, *fields: str) -> None:
        if not self.addr:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.addr)
        except OSError as exc:
            if not self._failed:  # once: the service manager may be gone while we stop
                log.warning("cannot notify systemd at %s: %s", self.addr.lstrip("\0"), exc)
                self._failed = True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                  "STATUS=reloading: replacing workers one by one")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: draining in-flight checks and flushing")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        """Ping at half the watchdog interval; call it every loop round."""
        if not self.watchdog_s:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_s / 2:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
