"""TLS for probes: the two per-worker SSL contexts and certificate expiry from the peer's DER.

`make_contexts()` returns (verifying, non-verifying) `TimedContext`s. Both offer only HTTP/1.1
via ALPN, and neither resumes sessions, so every check measures a full handshake. The
non-verifying context is lenient (older TLS versions and ciphers) because verify_tls=False
exists to watch devices that cannot be fixed. Connections made with either do not decode the
peer certificate into a dict (see `_UndecodedPeer`); its expiry is read from the DER.
"""
from __future__ import annotations

import calendar
import ssl
import time
import warnings
from time import perf_counter
from typing import Any

from engine.probes.outcome import current_timings


class _UndecodedPeer(ssl.SSLObject):
    """`getpeercert()` returns {} instead of the decoded certificate (binary_form=True is
    unchanged). uvloop and asyncio decode it after every handshake for the transport's
    'peercert' extra info, which nothing here reads: ≈4 % of an HTTPS check's CPU in a profile.
    Verification and hostname checks happen inside OpenSSL and do not use it."""

    def getpeercert(self, binary_form: bool = False) -> Any:
        return super().getpeercert(True) if binary_form else {}


class TimedContext(ssl.SSLContext):
    """An SSLContext that marks `connected` on the current check's Timings when the event loop
    creates the TLS object — which asyncio and uvloop do once TCP is up, to start the handshake.
    This splits connect from TLS time without a Python socket per check."""

    sslobject_class = _UndecodedPeer  # documented hook: the class wrap_bio() returns

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | bytes | None = None, session: Any = None) -> ssl.SSLObject:
        t = current_timings.get()
        if t is not None and not t.connected:
            t.connected = perf_counter()
        if isinstance(server_hostname, str) and server_hostname.isascii():
            # Probe hosts are already A-labels (yarl, getaddrinfo): as bytes they skip Python's
            # slow 'idna' codec (~20 µs per handshake), which leaves ASCII labels unchanged.
            server_hostname = server_hostname.encode("ascii")
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)


def _client_context() -> TimedContext:
    ctx = TimedContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname, as the default
    ctx.load_default_certs()
    return ctx


def make_contexts(cafile: str | None = None) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Verifying context (system CAs, plus `cafile` if given) and a non-verifying one."""
    verify = _client_context()
    if cafile:
        verify.load_verify_locations(cafile=cafile)
    verify.set_alpn_protocols(["http/1.1"])
    loose = _client_context()
    loose.check_hostname = False
    loose.verify_mode = ssl.CERT_NONE
    loose.set_alpn_protocols(["http/1.1"])
    try:
        with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: that is the point here
            warnings.simplefilter("ignore", DeprecationWarning)
            loose.minimum_version = ssl.TLSVersion.TLSv1
        loose.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ssl.SSLError, ValueError):
        pass  # the local OpenSSL policy forbids it; keep its defaults
    return verify, loose


def _tlv(der: bytes, i: int) -> tuple[int, int, int]:
    """DER element at i -> (tag, value start, value end)."""
    tag, length = der[i], der[i + 1]
    i += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(der[i:i + n], "big")
        i += n
    return tag, i, i + length


def not_after(der: bytes) -> float:
    """notAfter of an X.509 certificate in DER, as a Unix timestamp (ValueError if malformed)."""
    try:
        _, i, _ = _tlv(der, 0)            # Certificate
        _, i, _ = _tlv(der, i)            # TBSCertificate
        tag, _, end = _tlv(der, i)
        if tag == 0xA0:                   # [0] version
            i = end
        for _ in range(3):                # serialNumber, signature, issuer
            i = _tlv(der, i)[2]
        tag, i, _ = _tlv(der, i)          # validity
        i = _tlv(der, i)[2]               # notBefore
        tag, start, end = _tlv(der, i)    # notAfter
        text = der[start:end].decode("ascii").rstrip("Z")
        if tag == 0x17:                   # UTCTime YYMMDDHHMMSS
            year = int(text[:2])
            text = str(1900 + year if year >= 50 else 2000 + year) + text[2:]
        elif tag != 0x18:                 # GeneralizedTime YYYYMMDDHHMMSS
            raise ValueError("unexpected time tag")
        fields = (int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]),
                  int(text[10:12]), int(text[12:14] or 0))
        return float(calendar.timegm(fields))
    except (IndexError, UnicodeError) as exc:
        raise ValueError(f"malformed certificate: {exc}") from None


def expiry_days(transport: Any) -> float | None:
    """Days until the peer certificate of a TLS transport expires (negative if expired), read
    from its DER (≈4 µs; no cache, so no memory per certificate). None if unavailable."""
    try:
        der = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        if not der:
            return None
        return round((not_after(der) - time.time()) / 86400.0, 3)
    except (AttributeError, ValueError, ssl.SSLError):
        return None
