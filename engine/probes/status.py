"""`expected_status` parsing: '200-299,301' -> a matcher answering `code in matcher` in O(1).

Grammar: comma-separated items; an item is a code (`301`), a range (`200-299`) or a class
(`2xx`). Codes are 100..999. Whitespace around items is ignored. Anything else raises
`InvalidMonitor` with a one-line message. Parsed matchers are cached by their text, so the hot
path never re-parses a monitor's setting.
"""
from __future__ import annotations

import functools

from engine.errors import InvalidMonitor

_MIN, _MAX = 100, 999


class StatusMatcher:
    """Immutable set of HTTP status codes backed by a 1000-entry bitmap."""

    __slots__ = ("_bits", "text")

    def __init__(self, bits: bytes, text: str) -> None:
        self._bits = bits
        self.text = text

    def __contains__(self, code: object) -> bool:
        return type(code) is int and 0 <= code <= _MAX and self._bits[code] == 1  # type: ignore[operator]

    __call__ = __contains__

    def __repr__(self) -> str:
        return f"StatusMatcher({self.text!r})"

    def __str__(self) -> str:
        return self.text


def _code(item: str, text: str) -> int:
    if not item.isdigit() or len(item) != 3:
        raise InvalidMonitor(f"invalid expected_status {text!r}: {item!r} is not a 3-digit status code")
    code = int(item)
    if code < _MIN:
        raise InvalidMonitor(f"invalid expected_status {text!r}: {code} is below 100")
    return code


@functools.lru_cache(maxsize=4096)
def parse_expected_status(text: str) -> StatusMatcher:
    """Parse an expected_status setting; raise `InvalidMonitor` (one line) if it is not valid."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidMonitor("invalid expected_status: empty")
    bits = bytearray(_MAX + 1)
    for raw in text.split(","):
        item = raw.strip().lower()
        if not item:
            raise InvalidMonitor(f"invalid expected_status {text!r}: empty item")
        if len(item) == 3 and item[0] in "123456789" and item[1:] == "xx":
            lo = int(item[0]) * 100
            hi = lo + 99
        elif "-" in item:
            left, _, right = item.partition("-")
            lo, hi = _code(left.strip(), text), _code(right.strip(), text)
            if lo > hi:
                raise InvalidMonitor(f"invalid expected_status {text!r}: range {item!r} is reversed")
        else:
            lo = hi = _code(item, text)
        bits[lo:hi + 1] = b"\x01" * (hi - lo + 1)
    return StatusMatcher(bytes(bits), text.strip())
