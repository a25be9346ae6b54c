"""The engine under test: `uptime-engine run --workers N` as a subprocess (the real supervisor)."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import procs
from bench.stores import ROOT


class EngineProcess:
    def __init__(self, env: dict[str, str], workers: int, log_path: Path,
                 concurrency: int | None = None, gc_threshold: int | None = None) -> None:
        self.env = env
        self.workers = workers
        self.concurrency = concurrency
        self.log_path = log_path
        self.gc_threshold = gc_threshold  # experiment: gen-0 GC threshold set before the fork
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        args = [sys.executable, "-m", "engine", "run", "--workers", str(self.workers)]
        if self.gc_threshold:
            # Not a change to the engine: the same entry point, with the collector's threshold
            # raised first (workers inherit it across fork). Measures a proposed engine change.
            args[1:3] = ["-c", f"import gc, sys; gc.set_threshold({self.gc_threshold}, 20, 100); "
                               "from engine.cli import main; sys.exit(main(sys.argv[1:]))"]
        if self.concurrency:
            args += ["--concurrency", str(self.concurrency)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, env=self.env, cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def wait_for(self, pattern: str, timeout: float, count: int = 1) -> re.Match:
        """Wait until the log has `count` lines matching the regex; fail if the engine exits."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = list(rx.finditer(self.output()))
            if len(found) >= count:
                return found[count - 1]
            if self.proc is not None and self.proc.poll() is not None:
                tail = "\n".join(self.output().splitlines()[-5:])
                raise RuntimeError(f"engine exited ({self.proc.returncode}) before {pattern!r}:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"engine: no {pattern!r} within {timeout:.0f} s (log {self.log_path})")
            await asyncio.sleep(0.1)

    def worker_pids(self) -> list[int]:
        return procs.children_of(self.pid) if self.proc and self.proc.poll() is None else []

    async def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM (workers drain and flush), then SIGKILL past `timeout`. Returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.proc.poll() is None:
            for pid in self.worker_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait()
        if self._log:
            self._log.close()
        return self.proc.returncode
