"""The supervisor: forks the worker processes and keeps them alive (gunicorn/uvicorn style).

Settings are built and validated before fork; each child makes its own event loop and connections.
Signal handlers only queue the signal; the main loop dispatches to `handle_<name>()`. Workers touch
a heartbeat file; a silent one is killed (SIGABRT, then SIGKILL) and replaced. A dead worker's
leased jobs are released at once. A worker that cannot boot stops the supervisor with its reason
instead of respawning forever.
"""
from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field

from engine import logs, metrics
from engine.sdnotify import Notifier
from engine.settings import Settings

log = logging.getLogger("engine.supervisor")

BOOT_ERROR = 3          # worker exit code: bad settings or unreachable services at start
SIGNALS = {signal.SIGTERM: "term", signal.SIGINT: "int", signal.SIGHUP: "hup", signal.SIGCHLD: "chld"}


def worker_id(probe: str, pid: int) -> str:
    return f"{probe}/{pid}"


@dataclass
class Slot:
    index: int
    pid: int = 0
    started: float = 0.0
    heartbeat: str = ""
    failures: int = 0           # quick deaths in a row (crash loop backoff)
    respawn_at: float = 0.0
    retiring: set[int] = field(default_factory=set)


class Supervisor:
    def __init__(self, settings: Settings, reload=None) -> None:
        self.settings = settings
        self.reload = reload        # callable returning fresh Settings (SIGHUP)
        self.slots = [Slot(i) for i in range(settings.workers)]
        self.signals: list[str] = []
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.exit_reason = ""
        self.tmpdir = tempfile.mkdtemp(prefix="uptime-engine-")
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.notify = Notifier()
        self.announced = False      # READY=1 sent (every worker booted)

    # -- signals -----------------------------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        self.signals.append(SIGNALS[signum])
        try:
            os.write(self.wake_w, b".")
        except BlockingIOError:
            pass

    def run(self) -> int:
        for signum in SIGNALS:
            signal.signal(signum, self._on_signal)
        log.info("supervisor starting %d workers (probe %s)", len(self.slots), self.settings.probe_id)
        metrics.supervisor_started(self.settings)
        for slot in self.slots:
            self.spawn(slot)
        while True:
            ready, _, _ = select.select([self.wake_r], [], [], 0.5)
            if ready:
                os.read(self.wake_r, 4096)
            self.notify.watchdog()
            while self.signals:
                getattr(self, f"handle_{self.signals.pop(0)}")()
            self.reap()
            if self.stopping:
                if not self.live_pids():
                    break
                if time.monotonic() > self.stop_deadline:
                    self.kill_all(signal.SIGKILL)
                continue
            self.keep_alive()
            if not self.announced and all(self._booted(slot) for slot in self.slots):
                self.announced = True
                self.notify.ready(self._status())
        log.info("supervisor stopped")
        self.notify.close()
        return self.exit_code

    def _status(self) -> str:
        return f"{len(self.slots)} workers checking (probe {self.settings.probe_id})"

    @staticmethod
    def _booted(slot: Slot) -> bool:
        """The worker's heartbeat file says it started (a boot failure writes its reason there)."""
        if not slot.pid:
            return False
        try:
            with open(slot.heartbeat, "rb") as f:
                return f.read(5) == b"ready"
        except FileNotFoundError:
            return False

    def handle_term(self) -> None:
        if self.stopping:
            log.warning("second signal: stopping now")
            self.kill_all(signal.SIGKILL)
            return
        log.info("stopping: workers finish in-flight checks (grace %.1f s) and flush",
                 self.settings.engine.grace_ms / 1000)
        self.stopping = True
        self.notify.stopping()
        self.stop_deadline = time.monotonic() + self.settings.engine.grace_ms / 1000 + 15
        self.kill_all(signal.SIGTERM)

    handle_int = handle_term

    def handle_chld(self) -> None:
        pass  # reap() runs every round

    def handle_hup(self) -> None:
        if self.reload is None:
            return
        try:
            self.settings = self.reload()
        except Exception as exc:  # noqa: BLE001 - keep running on the old settings
            log.error("reload failed, keeping the current settings: %s", exc)
            return
        log.info("reloading: replacing workers one by one")
        self.notify.reloading()
        for slot in self.slots:
            old = slot.pid
            self.spawn(slot)
            if old:
                slot.retiring.add(old)
                self._wait_ready(slot)
                self._signal(old, signal.SIGTERM)
            self.notify.watchdog()
        self.notify.ready(self._status())

    def _wait_ready(self, slot: Slot, timeout: float = 15.0) -> None:
        """Wait until the new worker's heartbeat shows it booted, so checking never pauses."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.stat(slot.heartbeat).st_size > 0:
                    return
            except FileNotFoundError:
                pass
            time.sleep(0.05)

    # -- children ----------------------------------------------------------------------------
    def spawn(self, slot: Slot) -> None:
        heartbeat = os.path.join(self.tmpdir, f"w{slot.index}-{time.monotonic_ns()}")
        open(heartbeat, "wb").close()
        settings = self.settings
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                for signum in SIGNALS:
                    signal.signal(signum, signal.SIG_DFL)
                os.close(self.wake_r)
                os.close(self.wake_w)
                logs.configure(settings.engine.log_level)
                from engine import worker
                code = worker.serve(settings, slot.index, worker_id(settings.probe_id, os.getpid()),
                                    heartbeat)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - the child must never return into the parent's loop
                logging.getLogger("engine.worker").exception("worker %d crashed", slot.index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        slot.pid, slot.started, slot.heartbeat = pid, time.monotonic(), heartbeat

    def live_pids(self) -> list[int]:
        return [p for s in self.slots for p in ([s.pid] if s.pid else []) + list(s.retiring)]

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            metrics.worker_exited(pid)
            for slot in self.slots:
                if pid in slot.retiring:
                    slot.retiring.discard(pid)
                    self._release(pid)
                elif pid == slot.pid:
                    self._worker_exited(slot, code)

    def _worker_exited(self, slot: Slot, code: int) -> None:
        pid = slot.pid
        slot.pid = 0
        try:
            with open(slot.heartbeat) as f:
                note = f.read().strip()  # a worker that cannot boot leaves its reason here
            os.unlink(slot.heartbeat)
        except FileNotFoundError:
            note = ""
        if self.stopping:
            if code not in (0, -signal.SIGTERM):
                log.warning("worker %d exited with %s while stopping", slot.index, code)
            self._release(pid)
            return
        if code == BOOT_ERROR:
            self.exit_reason = note or f"worker {slot.index} could not start"
            log.error("stopping: %s", self.exit_reason)
            self.exit_code = BOOT_ERROR
            self.handle_term()
            return
        log.warning("worker %d (pid %d) died (%s); replacing it", slot.index, pid,
                    f"signal {-code}" if code < 0 else f"exit {code}")
        metrics.worker_restarted()
        self._release(pid)
        # A death within 5 s of the start is quick: the first is replaced at once, the next after
        # 1, 2, 4 ... s (at most 30 s); a worker that lived longer starts the count again.
        quick = time.monotonic() - slot.started < 5.0
        slot.failures = slot.failures + 1 if quick else 0
        delay = min(2.0 ** (slot.failures - 2), 30.0) if slot.failures > 1 else 0.0
        slot.respawn_at = time.monotonic() + delay
        if delay:
            log.warning("worker %d is crash-looping: next start in %.1f s", slot.index, delay)

    def keep_alive(self) -> None:
        now = time.monotonic()
        timeout = self.settings.engine.heartbeat_timeout_ms / 1000
        for slot in self.slots:
            if slot.pid == 0 and now >= slot.respawn_at:
                self.spawn(slot)
            elif slot.pid and now - slot.started > timeout:
                try:
                    silent = time.time() - os.stat(slot.heartbeat).st_mtime
                except FileNotFoundError:
                    continue
                if silent > timeout:
                    log.error("worker %d (pid %d) silent for %.0f s: killing it", slot.index, slot.pid, silent)
                    self._signal(slot.pid, signal.SIGABRT)
                    time.sleep(0.5)
                    self._signal(slot.pid, signal.SIGKILL)

    def _release(self, pid: int) -> None:
        """Release a dead worker's leased jobs now rather than after their lease."""
        from engine.queue import Queue, connect

        async def release() -> int:
            redis = connect(self.settings.dragonfly)
            try:
                return await Queue(redis, self.settings.dragonfly.prefix, self.settings.queue).recover(
                    worker=worker_id(self.settings.probe_id, pid))
            finally:
                await redis.aclose()

        try:
            n = asyncio.run(release())
            if n:
                log.warning("released %d jobs held by worker pid %d", n, pid)
        except Exception as exc:  # noqa: BLE001 - the lease expiry recovers them anyway
            log.warning("could not release jobs of pid %d now (their lease will): %s", pid, exc)

    def _signal(self, pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def kill_all(self, signum: int) -> None:
        for pid in self.live_pids():
            self._signal(pid, signum)
