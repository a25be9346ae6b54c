"""Output: one key=value summary line per run, a JSON file, and PNG plots."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson


def line(summary: dict) -> str:
    """`scenario=steady offered=5000 achieved=4998.3 ...` (None values left out)."""
    parts = []
    for k, v in summary.items():
        if k.startswith("_") or v is None:
            continue
        if isinstance(v, float):
            v = f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 10 else f"{v:.1f}".rstrip("0").rstrip(".")
        text = str(v)
        parts.append(f"{k}={text.replace(' ', ',') if ' ' in text else text}")
    return " ".join(parts)


def _plain(obj):
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError


def write_json(path: Path, meta: dict, results: list[dict]) -> None:
    runs = []
    for r in results:
        raw = r.get("_raw") or {}
        keep = {k: raw[k] for k in ("series", "timeline", "steps", "window") if k in raw}
        runs.append({"summary": {k: v for k, v in r.items() if k != "_raw"}, "raw": keep})
    path.write_bytes(orjson.dumps({**meta, "runs": runs}, default=_plain,
                                  option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))


def plot(path: Path, summary: dict) -> Path | None:
    """checks/s (attempts and first attempts, offered) and first-attempt lateness p50/p99/max per
    second over the run; the measured window is shaded. None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    raw = summary.get("_raw") or {}
    series = raw.get("series") or []
    if not series:
        return None
    t0 = series[0]["t"]
    xs = [r["t"] - t0 for r in series]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    ax1.plot(xs, [r["n"] for r in series], label="attempts/s", lw=1.4)
    ax1.plot(xs, [r["n1"] for r in series], label="first attempts/s", lw=1, alpha=0.7)
    if any(r["failed"] for r in series):
        ax1.plot(xs, [r["failed"] for r in series], label="failed/s", lw=1, alpha=0.7)
    steps = raw.get("steps")
    windows = [(s.get("_t0"), s.get("_t1"), s["offered"]) for s in steps] if steps else []
    w = raw.get("window")
    if w:
        windows = [(w["t0"], w["t1"], summary.get("offered"))]
    for a, b, offered in windows:
        if a is None:
            continue
        for ax in (ax1, ax2):
            ax.axvspan(a - t0, b - t0, color="tab:green", alpha=0.08)
        if offered:
            ax1.hlines(offered, a - t0, b - t0, colors="k", linestyles="dashed", lw=1)
    if summary.get("killed_at"):
        for ax in (ax1, ax2):
            ax.axvline(summary["killed_at"] - t0, color="tab:red", lw=1, alpha=0.6)
        ax1.text(summary["killed_at"] - t0, ax1.get_ylim()[1] * 0.02, " kill -9", color="tab:red", fontsize=8)
    ceiling = summary.get("ceiling")
    if ceiling:
        ax1.axhline(ceiling, color="tab:red", ls=":", lw=1, label=f"wrk ceiling {ceiling:,.0f}/s")
    ax1.set_ylabel("checks / s")
    ax1.legend(loc="lower right", fontsize=8)
    ax1.grid(alpha=0.3)
    for key, label in (("p50", "lateness p50"), ("p99", "lateness p99"), ("max", "lateness max")):
        ax2.plot(xs, [max(r[key] or 0, 0.1) for r in series], label=label, lw=1.2)
    ax2.set_yscale("log")
    ax2.set_ylabel("ms (first attempts)")
    ax2.set_xlabel("seconds")
    ax2.legend(loc="upper left", fontsize=8)
    ax2.grid(alpha=0.3, which="both")
    title = f"{summary.get('run', summary.get('scenario'))}: "
    if "achieved" in summary:
        title += (f"achieved {summary['achieved']:,.0f}/s of {summary['offered']:,.0f}/s offered, "
                  f"p99 lateness {summary['lateness_p99_ms']:,.0f} ms")
    elif "max_held" in summary:
        title += f"max held {summary['max_held']:,}/s (p99 < 1 s)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
