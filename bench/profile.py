"""Where a worker's time goes: py-spy (sampling, non-blocking) on one engine worker during a
window, then the collapsed stacks summarised by function (self and inclusive share).

    python -m bench.run --scenario steady --profile        # writes bench/out/profile-<run>.txt
    python -m bench.profile bench/out/profile-steady-5000.raw   # summarise a raw file again
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


def find_pyspy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def record(pid: int, seconds: int, raw: Path) -> subprocess.Popen | None:
    exe = find_pyspy()
    if exe is None:
        return None
    return subprocess.Popen([exe, "record", "-p", str(pid), "--nonblocking", "-d", str(seconds), "-r", "200",
                             "-f", "raw", "-o", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


_FRAME = re.compile(r"^(?P<func>[^ ]+) \((?P<file>[^:)]+)(?::\d+)?\)$")


def _name(frame: str) -> str:
    """'claim (engine/queue/__init__.py:123)' -> 'engine/queue/__init__.py:claim'."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{m['func']}"


def summarize(raw: Path, top: int = 30) -> str:
    self_: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    pkg: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = [_name(f) for f in stack.split(";") if f]
        # py-spy prefixes the thread; idle shows as the event loop's poll
        if frames:
            self_[frames[-1]] += count
            leaf_pkg = frames[-1].split("/", 1)[0].split(":", 1)[0]
            pkg[leaf_pkg] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return "no samples"
    lines = [f"samples: {total}", "", "self (leaf) share by function:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in self_.most_common(top)]
    lines += ["", "inclusive share by function:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(top * 2)]
    lines += ["", "self share by top-level package/file:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in pkg.most_common(15)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 30))
