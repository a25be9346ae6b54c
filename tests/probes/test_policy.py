"""Target policy: denied addresses are never connected to, whether literal, resolved or
reached by a redirect."""
from __future__ import annotations

import pytest

from tests.probes.helpers import http, tcp, verdict
from tests.probes.test_http import redirect, respond, response

LOOPBACK_DENIED = {"deny_networks": ("127.0.0.0/8", "::1/128")}


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/",
    "http://[fe80::1]/",
])
async def test_metadata_address_blocked_by_default(prober, url):
    res = await verdict(prober, http(url), False, "blocked", within_s=0.2)
    assert res.connect_ms is None


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_denied_target_never_connected(serve, make_prober, host):
    prober = await make_prober(**LOOPBACK_DENIED)
    srv = await serve(respond(response()))
    await verdict(prober, http(srv.url(host=host)), False, "blocked")
    await verdict(prober, tcp(host, srv.port), False, "blocked")
    assert srv.connections == 0


async def test_allow_list(serve, make_prober):
    srv = await serve(respond(response()))
    outside = await make_prober(allow_networks=("10.0.0.0/8",))
    await verdict(outside, http(srv.url()), False, "blocked")
    inside = await make_prober(allow_networks=("127.0.0.0/8",))
    await verdict(inside, http(srv.url()), True)
    assert srv.connections == 1


@pytest.mark.parametrize("location", ["http://169.254.169.254/", "http://[::ffff:a9fe:a9fe]/"])
async def test_redirect_to_denied_address_blocked(serve, prober, location):
    srv = await serve(respond(redirect(location)))
    res = await verdict(prober, http(srv.url()), False, "blocked")
    assert res.connect_ms is None  # phases are the blocked hop's
    assert srv.connections == 1
