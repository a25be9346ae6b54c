"""TLS for probes: the two per-worker SSL contexts and certificate expiry from the peer's DER.

`make_contexts()` returns (verifying, non-verifying). Both offer only HTTP/1.1 via ALPN, and
neither resumes sessions, so every check measures a full handshake. The non-verifying context
is lenient (older TLS versions and ciphers) because verify_tls=False exists to watch devices
that cannot be fixed.
"""
from __future__ import annotations

import calendar
import ssl
import time
import warnings


def make_contexts(cafile: str | None = None) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Verifying context (system CAs, plus `cafile` if given) and a non-verifying one."""
    verify = ssl.create_default_context()
    if cafile:
        verify.load_verify_locations(cafile=cafile)
    verify.set_alpn_protocols(["http/1.1"])
    loose = ssl.create_default_context()
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


def expiry_days(ssl_object: object) -> float | None:
    """Days until the peer certificate expires (negative if expired); None if unavailable."""
    try:
        der = ssl_object.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        if not der:
            return None
        return round((not_after(der) - time.time()) / 86400.0, 3)
    except (AttributeError, ValueError, ssl.SSLError):
        return None
