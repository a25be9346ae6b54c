"""Streaming keyword search over a response body, bounded by max_body_bytes.

The keyword is matched as UTF-8 bytes, case-sensitively, against the (decoded, if gzip/deflate)
body. Only the first `limit` bytes are searched; memory held is the keyword length, not the body.
"""
from __future__ import annotations

import zlib


class KeywordScan:
    """Feed body chunks; `feed()` returns True once the verdict is known (found or limit hit)."""

    __slots__ = ("needle", "limit", "seen", "found", "_tail", "_keep")

    def __init__(self, needle: bytes, limit: int) -> None:
        self.needle = needle
        self.limit = limit
        self.seen = 0
        self.found = False
        self._tail = b""
        self._keep = len(needle) - 1

    def feed(self, chunk: bytes) -> bool:
        room = self.limit - self.seen
        if len(chunk) > room:
            chunk = chunk[:room]
        self.seen += len(chunk)
        needle = self.needle
        if needle in chunk or (self._tail and needle in self._tail + chunk[: self._keep]):
            self.found = True
            return True
        if self._keep:
            if len(chunk) >= self._keep:
                self._tail = chunk[-self._keep:]
            else:
                self._tail = (self._tail + chunk)[-self._keep:]
        return self.seen >= self.limit

    def verdict(self, invert: bool, keyword: str) -> tuple[bool, str]:
        """(ok, message) once the body ended or the verdict is known."""
        if self.found != invert:
            return True, ""
        if invert:
            return False, f"keyword {keyword[:80]!r} found in body"
        return False, f"keyword {keyword[:80]!r} not found in the first {self.seen} bytes"


class Decoder:
    """Incremental gzip/deflate decoding with output bounded per call (no decompression bombs)."""

    __slots__ = ("_z", "_raw_tried")

    def __init__(self) -> None:
        self._z = zlib.decompressobj(wbits=47)  # auto-detect gzip or zlib header
        self._raw_tried = False

    def decode(self, data: bytes, max_out: int) -> bytes:
        try:
            return self._z.decompress(data, max_out)
        except zlib.error:
            if self._raw_tried:
                raise
            self._raw_tried = True  # some servers send raw deflate for 'deflate'
            self._z = zlib.decompressobj(wbits=-15)
            return self._z.decompress(data, max_out)
