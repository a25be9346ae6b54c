"""Assertions shared by the hostile-target tests."""
from __future__ import annotations

import time

from engine.models import ERROR_KINDS, MonitorSpec, ProbeResult
from engine.probes import Prober

MARGIN_S = 0.5  # scheduling slack allowed beyond a check's deadline


async def verdict(prober: Prober, spec: MonitorSpec, ok: bool, kind: str = "",
                  within_s: float | None = None) -> ProbeResult:
    """Run one check; assert verdict, kind, deadline and the result's invariants."""
    started = time.perf_counter()
    res = await prober.check(spec)  # an escaping exception fails the test here
    elapsed = time.perf_counter() - started
    assert isinstance(res, ProbeResult)
    assert (res.ok, res.error_kind) == (ok, kind), res
    assert elapsed <= (within_s if within_s is not None else spec.timeout_ms / 1000 + MARGIN_S), \
        (elapsed, res)
    if ok:
        assert res.error_kind == ""
    else:
        assert res.error_kind in ERROR_KINDS and res.error, res
    assert "\n" not in res.error and len(res.error) <= 200, res.error
    assert "Traceback" not in res.error
    phases = [p for p in (res.dns_ms, res.connect_ms, res.tls_ms, res.ttfb_ms) if p is not None]
    assert all(p >= 0 for p in phases), res
    assert sum(phases) <= res.latency_ms + 1e-6, res
    assert res.latency_ms <= elapsed * 1000 + 1, (elapsed, res)
    return res


def http(url: str, **fields) -> MonitorSpec:
    fields.setdefault("timeout_ms", 2000)
    return MonitorSpec(id=1, type="http", interval_s=60, url=url, **fields)


def tcp(host: str, port: int, **fields) -> MonitorSpec:
    fields.setdefault("timeout_ms", 2000)
    return MonitorSpec(id=1, type="tcp", interval_s=60, host=host, port=port, **fields)
