"""HTTPS: certificate verification failures are 'tls'; verify_tls=False accepts them."""
from __future__ import annotations

import asyncio

import pytest

from tests.probes.helpers import http, verdict
from tests.probes.test_http import respond, response


async def test_valid_certificate(serve, prober, tls):
    srv = await serve(respond(response()), ssl=tls["good"])
    res = await verdict(prober, http(srv.url(host="localhost")), True)
    assert res.tls_ms is not None and res.tls_ms > 0 and res.connect_ms is not None
    assert res.cert_expiry_days is not None and res.cert_expiry_days > 300


async def test_ip_address_certificate(serve, prober, tls):
    srv = await serve(respond(response()), ssl=tls["good"])
    await verdict(prober, http(srv.url()), True)


@pytest.mark.parametrize("cert,words", [
    ("expired", "expired"), ("self_signed", "certificate"), ("wrong_host", "match"),
])
async def test_bad_certificate_is_tls(serve, prober, tls, cert, words):
    srv = await serve(respond(response()), ssl=tls[cert])
    res = await verdict(prober, http(srv.url(host="localhost")), False, "tls")
    assert words in res.error.lower(), res.error
    assert res.connect_ms is not None and res.status_code == 0


@pytest.mark.parametrize("cert", ["expired", "self_signed", "wrong_host"])
async def test_bad_certificate_accepted_without_verification(serve, prober, tls, cert):
    srv = await serve(respond(response()), ssl=tls[cert])
    res = await verdict(prober, http(srv.url(host="localhost"), verify_tls=False), True)
    assert res.cert_expiry_days is not None
    if cert == "expired":
        assert -3 < res.cert_expiry_days < -1


async def test_plain_http_server_on_https_url(serve, prober):
    async def handler(reader, writer):
        await reader.read(1)  # a ClientHello is not HTTP: answer 400 as servers do
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
    srv = await serve(handler)
    await verdict(prober, http(srv.url().replace("http:", "https:")), False, "tls")
