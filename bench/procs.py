"""Process accounting from /proc: CPU seconds and memory of process groups, machine CPU.

A group is a root pid plus its descendants. Its CPU is the sum of its live members' utime+stime
plus the root's cutime+cstime (children it reaped), so a worker that died mid-run still counts.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()  # fields from 3 (state) on


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime+stime (and cutime+cstime of reaped children when asked) in seconds; 0 if gone."""
    f = _stat(pid)
    if f is None:
        return 0.0
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / TICK


def ppid(pid: int) -> int:
    f = _stat(pid)
    return int(f[1]) if f else -1


def children_of(pid: int) -> list[int]:
    """Direct children (every thread's children file, falling back to a /proc scan)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        return out
    except OSError:
        pass
    return [p for p in _all_pids() if ppid(p) == pid]


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def descendants(pid: int) -> list[int]:
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children_of(p):
            seen.append(c)
            todo.append(c)
    return seen


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB; (0, 0) if gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (all cores)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return (total - idle) / TICK, total / TICK


@dataclass
class Group:
    """A named set of processes. mode 'tree': the roots, their descendants and whatever the roots
    reaped; 'self': the roots only; 'children': descendants and reaped, not the roots themselves.
    `extra` are pids counted on their own (they come and go)."""
    name: str
    roots: list[int]
    mode: str = "tree"
    extra: list[int] = field(default_factory=list)

    def members(self) -> list[int]:
        out: list[int] = []
        if self.mode != "self":
            for r in self.roots:
                out += descendants(r)
        return out + list(self.extra)

    def cpu(self) -> float:
        total = 0.0
        for r in self.roots:
            f = _stat(r)
            if f is None:
                continue
            if self.mode in ("tree", "self"):
                total += (int(f[11]) + int(f[12])) / TICK
            if self.mode in ("tree", "children"):
                total += (int(f[13]) + int(f[14])) / TICK
        return total + sum(cpu_seconds(p) for p in self.members())


def pid_listening(port: int) -> int | None:
    """The pid holding a listening TCP socket on `port` (any address), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(cols[9])
        except OSError:
            continue
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    found = []
    for pid in _all_pids():
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    found.append(pid)
                    break
        except OSError:
            continue
    # A forking server's children may hold the socket too: the root is the one whose parent doesn't.
    roots = [p for p in found if ppid(p) not in found]
    return min(roots or found) if found else None


class Meter:
    """CPU of several groups (and the machine) between two points in time."""

    def __init__(self, groups: list[Group]) -> None:
        self.groups = groups
        self.t0 = 0.0
        self.start: dict[str, float] = {}
        self.machine0 = (0.0, 0.0)
        self.self0 = 0.0

    def mark(self) -> None:
        self.t0 = time.time()
        self.start = {g.name: g.cpu() for g in self.groups}
        self.machine0 = machine_cpu()
        self.self0 = _self_cpu()

    def read(self) -> dict[str, float]:
        """CPU seconds per group since mark(), plus 'bench' (this process), 'machine_busy',
        'machine_total' and 'wall'."""
        out = {g.name: max(0.0, g.cpu() - self.start.get(g.name, 0.0)) for g in self.groups}
        busy, total = machine_cpu()
        out["bench"] = _self_cpu() - self.self0
        out["machine_busy"] = busy - self.machine0[0]
        out["machine_total"] = total - self.machine0[1]
        out["wall"] = time.time() - self.t0
        return out


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system
