"""Shapes that cross a boundary: the monitor spec carried in the queue and the probe's verdict.

Both are msgspec Structs so they are encoded and decoded by one reusable Encoder/Decoder per
process; the spec travels as msgpack inside the queue's `spec` hash.
"""
from __future__ import annotations

import msgspec


class MonitorSpec(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a worker needs to run one monitor's check (built by the scheduler from a PG row)."""

    id: int
    type: str  # 'http' | 'tcp'
    interval_s: int
    timeout_ms: int = 10_000
    retries: int = 3
    # http
    url: str | None = None
    method: str = "GET"
    headers: dict[str, str] = {}
    body: str | None = None
    expected_status: str = "200-299"
    keyword: str | None = None
    invert_keyword: bool = False
    follow_redirects: bool = True
    verify_tls: bool = True
    # tcp
    host: str | None = None
    port: int | None = None
    tcp_send: str | None = None
    tcp_expect: str | None = None


class ProbeResult(msgspec.Struct):
    """The verdict of one attempt. `error_kind` is '' when ok, else one of ERROR_KINDS."""

    ok: bool
    latency_ms: float
    status_code: int = 0
    error_kind: str = ""
    error: str = ""
    dns_ms: float | None = None
    connect_ms: float | None = None
    tls_ms: float | None = None
    ttfb_ms: float | None = None
    cert_expiry_days: float | None = None


# The documented set of failure kinds (README "Error kinds").
ERROR_KINDS = frozenset({
    "dns", "refused", "timeout", "tls", "reset", "protocol", "http_status", "keyword",
    "too_many_redirects", "blocked", "unreachable", "invalid", "internal",
})

spec_encoder = msgspec.msgpack.Encoder()
spec_decoder = msgspec.msgpack.Decoder(MonitorSpec)
