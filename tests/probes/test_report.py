"""check_target: the CLI's one-off check and its report."""
from __future__ import annotations

import pytest

from engine.errors import InvalidMonitor
from engine.probes import check_target
from engine.probes.report import target_spec
from engine.settings import ProbeSettings
from tests.probes.test_http import respond, response


async def test_http_target_report(serve):
    srv = await serve(respond(response()))
    res, report = await check_target(srv.url(), ProbeSettings(), timeout_ms=2000)
    assert res.ok and res.status_code == 200
    assert "verdict   UP" in report and "status    200" in report and "connect" in report


async def test_tcp_target_report_down():
    res, report = await check_target("127.0.0.1:1", ProbeSettings(), timeout_ms=2000)
    assert not res.ok
    assert "verdict   DOWN" in report and "kind      refused" in report


@pytest.mark.parametrize("target,kind,host,port", [
    ("example.com:443", "tcp", "example.com", 443),
    ("[::1]:8080", "tcp", "::1", 8080),
    ("https://example.com/health", "http", None, None),
])
def test_target_spec(target, kind, host, port):
    spec = target_spec(target)
    assert (spec.type, spec.host, spec.port) == (kind, host, port)


@pytest.mark.parametrize("target", ["example.com", "::1:80", "host:0", "host:http", "[::1]"])
def test_invalid_target(target):
    with pytest.raises(InvalidMonitor):
        target_spec(target)
