"""HTTP checks against well-behaved and hostile loopback servers."""
from __future__ import annotations

import asyncio
import gzip
import socket

import pytest

from tests.probes.conftest import read_request, reset
from tests.probes.helpers import http, verdict


def response(status: str = "200 OK", body: bytes = b"hello world", headers: bytes = b"") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n".encode() + headers
            + b"\r\n" + body)


def respond(raw: bytes):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(0.05)
    return handler


def routes(table: dict[str, bytes]):
    """Answer by request path; records the request lines seen."""
    seen: list[str] = []

    async def handler(reader, writer):
        line, _, _ = await read_request(reader)
        seen.append(line)
        writer.write(table[line.split()[1]])
        await writer.drain()
        await asyncio.sleep(0.05)
    handler.seen = seen  # type: ignore[attr-defined]
    return handler


def redirect(location: str, status: str = "302 Found") -> bytes:
    return response(status, b"", f"Location: {location}\r\n".encode())


async def test_200_ok_with_phases(serve, prober):
    srv = await serve(respond(response()))
    res = await verdict(prober, http(srv.url()), True)
    assert res.status_code == 200
    assert res.connect_ms is not None and res.ttfb_ms is not None
    assert res.tls_ms is None and res.dns_ms is None and res.cert_expiry_days is None


async def test_hostname_has_dns_phase(serve, prober):
    srv = await serve(respond(response()))
    res = await verdict(prober, http(srv.url(host="localhost")), True)
    assert res.dns_ms is not None


async def test_503_is_http_status(serve, prober):
    srv = await serve(respond(response("503 Service Unavailable")))
    res = await verdict(prober, http(srv.url()), False, "http_status")
    assert res.status_code == 503 and "503" in res.error


@pytest.mark.parametrize("status,expected,ok", [
    ("204 No Content", "200-299", True),
    ("503 Service Unavailable", "200-299,503", True),
    ("404 Not Found", "2xx,3xx", False),
    ("418 I'm a teapot", "400-499", True),
    ("200 OK", "201-299", False),
])
async def test_status_ranges(serve, prober, status, expected, ok):
    srv = await serve(respond(response(status, b"")))
    await verdict(prober, http(srv.url(), expected_status=expected), ok, "" if ok else "http_status")


@pytest.mark.parametrize("keyword,invert,ok", [
    ("world", False, True), ("absent", False, False), ("world", True, False), ("absent", True, True),
])
async def test_keyword(serve, prober, keyword, invert, ok):
    srv = await serve(respond(response(body=b"hello world " * 100)))
    await verdict(prober, http(srv.url(), keyword=keyword, invert_keyword=invert), ok,
                  "" if ok else "keyword")


async def test_keyword_split_across_chunks(serve, prober):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nneed\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"6\r\nle-hay\r\n0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
    srv = await serve(handler)
    await verdict(prober, http(srv.url(), keyword="needle"), True)


async def test_gzip_body_keyword(serve, prober):
    body = gzip.compress(b"<html>status: all systems operational</html>")
    srv = await serve(respond(response(body=body, headers=b"Content-Encoding: gzip\r\n")))
    await verdict(prober, http(srv.url(), keyword="operational"), True)


async def test_post_body_and_headers_sent(serve, prober):
    seen = {}

    async def handler(reader, writer):
        line, head, body = await read_request(reader)
        seen.update(line=line, head=head)
        writer.write(response(body=b"echo:" + body))
        await writer.drain()
    srv = await serve(handler)
    spec = http(srv.url("/api?x=1"), method="POST", body='{"ping": 1}', keyword='echo:{"ping": 1}',
                headers={"X-Token": "abc"})
    await verdict(prober, spec, True)
    assert seen["line"] == "POST /api?x=1 HTTP/1.1"
    assert b"X-Token: abc" in seen["head"] and b"User-Agent: uptime-engine/" in seen["head"]


async def test_head_request(serve, prober):
    async def handler(reader, writer):
        line, _, _ = await read_request(reader)
        assert line.startswith("HEAD ")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")  # no body for HEAD
        await writer.drain()
        await asyncio.sleep(0.5)
    srv = await serve(handler)
    await verdict(prober, http(srv.url(), method="HEAD"), True, within_s=0.4)


async def test_redirect_chain_followed(serve, prober):
    handler = routes({"/a": redirect("/b"), "/b": redirect("/c", "301 Moved Permanently"),
                      "/c": response(body=b"final page")})
    srv = await serve(handler)
    res = await verdict(prober, http(srv.url("/a"), keyword="final"), True)
    assert res.status_code == 200
    assert handler.seen == ["GET /a HTTP/1.1", "GET /b HTTP/1.1", "GET /c HTTP/1.1"]
    assert srv.connections == 3  # a new connection per hop


async def test_endless_redirect_loop(serve, make_prober):
    prober = await make_prober(max_redirects=5)
    srv = await serve(routes({"/loop": redirect("/loop")}))
    res = await verdict(prober, http(srv.url("/loop")), False, "too_many_redirects")
    assert srv.connections == 6 and res.status_code == 302


async def test_redirect_to_https(serve, prober, tls):
    secure = await serve(respond(response(body=b"secure")), ssl=tls["good"])
    plain = await serve(respond(redirect(secure.url("/", host="localhost"))))
    res = await verdict(prober, http(plain.url(), keyword="secure"), True)
    assert res.tls_ms is not None and res.cert_expiry_days is not None and res.cert_expiry_days > 0


async def test_redirect_to_unsupported_scheme(serve, prober):
    srv = await serve(respond(redirect("ftp://127.0.0.1/file")))
    await verdict(prober, http(srv.url()), False, "protocol")


async def test_no_follow_judges_3xx(serve, prober):
    srv = await serve(respond(redirect("/elsewhere")))
    res = await verdict(prober, http(srv.url(), follow_redirects=False), False, "http_status")
    assert res.status_code == 302
    await verdict(prober, http(srv.url(), follow_redirects=False, expected_status="200-299,302"), True)
    assert srv.connections == 2


async def test_303_after_post_becomes_get(serve, prober):
    handler = routes({"/form": redirect("/done", "303 See Other"), "/done": response()})
    srv = await serve(handler)
    await verdict(prober, http(srv.url("/form"), method="POST", body="a=1"), True)
    assert handler.seen == ["POST /form HTTP/1.1", "GET /done HTTP/1.1"]


async def test_slow_headers_time_out(serve, prober):
    async def handler(reader, writer):
        await read_request(reader)
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)
    srv = await serve(handler)
    res = await verdict(prober, http(srv.url(), timeout_ms=1000), False, "timeout")
    assert res.error == "timed out after 1000 ms receiving headers" and res.latency_ms >= 999


async def test_slow_body_with_keyword_times_out(serve, prober):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while True:
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.02)
    srv = await serve(handler)
    res = await verdict(prober, http(srv.url(), timeout_ms=1000, keyword="never"), False, "timeout")
    assert res.status_code == 200 and res.error == "timed out after 1000 ms reading body"


def endless_body(chunked: bool):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + (b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"\r\n"))
        block = b"y" * 16384
        frame = b"%x\r\n%s\r\n" % (len(block), block) if chunked else block
        while True:
            writer.write(frame)
            await writer.drain()
    return handler


@pytest.mark.parametrize("chunked", [False, True])
async def test_endless_body_without_keyword_is_quick(serve, prober, chunked):
    srv = await serve(endless_body(chunked))
    await verdict(prober, http(srv.url()), True, within_s=0.5)


@pytest.mark.parametrize("chunked", [False, True])
async def test_endless_body_keyword_stops_at_cap(serve, make_prober, chunked):
    prober = await make_prober(max_body_bytes=65536)
    srv = await serve(endless_body(chunked))
    res = await verdict(prober, http(srv.url(), keyword="needle"), False, "keyword", within_s=1.0)
    assert "65536" in res.error
    await verdict(prober, http(srv.url(), keyword="needle", invert_keyword=True), True, within_s=1.0)


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"HTTP/1.1 abc OK\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # TLS where HTTP was expected
])
async def test_garbage_status_line_is_protocol(serve, prober, raw):
    srv = await serve(respond(raw))
    await verdict(prober, http(srv.url()), False, "protocol")


async def test_bad_chunked_encoding_is_protocol(serve, prober):
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nhello\r\n0\r\n\r\n"
    srv = await serve(respond(raw))
    await verdict(prober, http(srv.url(), keyword="hello"), False, "protocol")


async def test_reset_mid_body(serve, prober):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"z" * 100)
        await writer.drain()
        await asyncio.sleep(0.05)
        reset(writer)
    srv = await serve(handler)
    await verdict(prober, http(srv.url(), keyword="needle"), False, "reset")


async def test_closed_mid_body(serve, prober):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"z" * 100)
        await writer.drain()
        writer.close()
    srv = await serve(handler)
    await verdict(prober, http(srv.url(), keyword="needle"), False, "reset")


@pytest.mark.parametrize("how", ["rst", "fin"])
async def test_connection_dropped_before_response(serve, prober, how):
    async def handler(reader, writer):
        await read_request(reader)
        if how == "rst":
            reset(writer)
        else:
            writer.close()
    srv = await serve(handler)
    await verdict(prober, http(srv.url()), False, "reset")


async def test_connection_refused(prober):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = await verdict(prober, http(f"http://127.0.0.1:{port}/"), False, "refused")
    assert res.connect_ms is None


async def test_ten_thousand_headers_is_protocol(serve, prober):
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    srv = await serve(respond(response(headers=headers)))
    await verdict(prober, http(srv.url()), False, "protocol", within_s=1.0)


async def test_huge_header_line_is_protocol(serve, prober):
    srv = await serve(respond(response(headers=b"X-Big: " + b"a" * (1 << 20) + b"\r\n")))
    await verdict(prober, http(srv.url()), False, "protocol", within_s=1.0)


async def test_endless_header_stream_is_bounded(serve, prober):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        while True:
            writer.write(b"a" * 16384)
            await writer.drain()
    srv = await serve(handler)
    await verdict(prober, http(srv.url()), False, "protocol", within_s=1.0)


async def test_ipv6_loopback(serve, prober):
    srv = await serve(respond(response()), host="::1")
    res = await verdict(prober, http(srv.url()), True)
    assert res.status_code == 200


async def test_unresolvable_name(prober):
    await verdict(prober, http("http://nonexistent.invalid/"), False, "dns")


async def test_tls_handshake_hang_times_out(serve, prober):
    async def handler(reader, writer):
        await asyncio.sleep(5)  # reads nothing, answers nothing
    srv = await serve(handler)
    res = await verdict(prober, http(srv.url().replace("http:", "https:"), timeout_ms=800),
                        False, "timeout")
    assert "TLS" in res.error and res.connect_ms is not None


@pytest.mark.parametrize("fields", [
    {"url": "not a url"}, {"url": "ftp://127.0.0.1/"}, {"url": None}, {"url": "http:///nohost"},
    {"expected_status": "200-abc"}, {"expected_status": ""},
    {"headers": {"X-Bad": "a\r\nInjected: 1"}},
])
async def test_invalid_specs(serve, prober, fields):
    srv = await serve(respond(response()))
    fields = {"url": srv.url(), **fields}
    url = fields.pop("url")
    await verdict(prober, http(url, **fields), False, "invalid")


async def test_each_check_opens_its_own_connection(serve, prober):
    srv = await serve(respond(response(headers=b"Connection: keep-alive\r\n")))
    results = await asyncio.gather(*(prober.check(http(srv.url())) for _ in range(200)))
    assert all(r.ok for r in results)
    await verdict(prober, http(srv.url()), True)
    assert srv.connections == 201


async def test_cancellation_propagates(serve, prober):
    async def handler(reader, writer):
        await asyncio.sleep(5)
    srv = await serve(handler)
    task = asyncio.ensure_future(prober.check(http(srv.url())))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_get_request_head(serve, prober):
    seen = {}

    async def handler(reader, writer):
        line, head, _ = await read_request(reader)
        seen.update(line=line, head=head.lower())
        writer.write(response())
        await writer.drain()
    srv = await serve(handler)
    await verdict(prober, http(srv.url("/p?q=1"), headers={"Accept": "text/html"}), True)
    assert seen["line"] == "GET /p?q=1 HTTP/1.1"
    head = seen["head"]
    assert f"host: 127.0.0.1:{srv.port}\r\n".encode() in head
    assert b"user-agent: uptime-engine/" in head and b"accept: text/html\r\n" in head
    assert head.count(b"accept:") == 1 and b"cookie" not in head
