"""parse_expected_status: grammar, errors and the matcher."""
from __future__ import annotations

import pytest

from engine.errors import InvalidMonitor
from engine.probes import parse_expected_status


@pytest.mark.parametrize("text,inside,outside", [
    ("200-299", [200, 250, 299], [199, 300, 0, 999]),
    ("200-299,301", [204, 301], [302, 404]),
    (" 2xx , 404 ", [200, 299, 404], [300, 403]),
    ("418", [418], [200]),
    ("100-999", [100, 999], [99, 1000, -1]),
])
def test_matcher(text, inside, outside):
    matcher = parse_expected_status(text)
    assert all(code in matcher for code in inside)
    assert not any(code in matcher for code in outside)
    assert "x" not in matcher and None not in matcher


@pytest.mark.parametrize("text", ["", " ", "abc", "200-", "299-200", "20", "2000", "099", "200,,301",
                                  "0xx", "2yy", "200-3xx"])
def test_invalid(text):
    with pytest.raises(InvalidMonitor) as info:
        parse_expected_status(text)
    assert "\n" not in str(info.value) and "expected_status" in str(info.value)


def test_cached():
    assert parse_expected_status("200-299") is parse_expected_status("200-299")
