"""`uptime-engine check URL|HOST:PORT`: one check now, and a human-readable report of it."""
from __future__ import annotations

from engine.errors import InvalidMonitor
from engine.models import MonitorSpec, ProbeResult
from engine.settings import ProbeSettings


def target_spec(target: str, timeout_ms: int = 10_000) -> MonitorSpec:
    """'https://host/path' -> http spec; 'host:port' or '[v6]:port' -> tcp spec.

    Raises InvalidMonitor (one line) for anything else.
    """
    target = target.strip()
    if "://" in target:
        return MonitorSpec(id=0, type="http", interval_s=60, timeout_ms=timeout_ms, url=target)
    if target.startswith("["):
        host, sep, port = target[1:].partition("]:")
    else:
        host, sep, port = target.rpartition(":")
        if ":" in host:
            raise InvalidMonitor(f"invalid target {target!r}: write an IPv6 address as [addr]:port")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidMonitor(f"invalid target {target!r}: expected URL or HOST:PORT")
    return MonitorSpec(id=0, type="tcp", interval_s=60, timeout_ms=timeout_ms, host=host,
                       port=int(port))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def format_report(target: str, res: ProbeResult) -> str:
    """Multi-line report: verdict, kind, message, status, phases, certificate."""
    lines = [f"target    {target}",
             f"verdict   {'UP' if res.ok else 'DOWN'}"]
    if not res.ok:
        lines += [f"kind      {res.error_kind}", f"message   {res.error}"]
    elif res.error:
        lines.append(f"message   {res.error}")
    if res.status_code:
        lines.append(f"status    {res.status_code}")
    lines.append(f"total     {_ms(res.latency_ms)}")
    for name, value in (("dns", res.dns_ms), ("connect", res.connect_ms), ("tls", res.tls_ms),
                        ("ttfb", res.ttfb_ms)):
        if value is not None:
            lines.append(f"  {name:<8}{_ms(value)}")
    if res.cert_expiry_days is not None:
        days = res.cert_expiry_days
        lines.append(f"cert      expires in {days:.1f} days" if days >= 0
                     else f"cert      EXPIRED {-days:.1f} days ago")
    return "\n".join(lines)


async def check_target(target: str, settings: ProbeSettings,
                       timeout_ms: int = 10_000) -> tuple[ProbeResult, str]:
    """Run one check of `target` with a throwaway Prober; (result, report).

    Raises InvalidMonitor for a target that is neither a URL nor HOST:PORT.
    """
    from engine.probes import Prober

    spec = target_spec(target, timeout_ms)
    prober = Prober(settings)
    await prober.start()
    try:
        res = await prober.check(spec)
    finally:
        await prober.close()
    return res, format_report(target, res)
