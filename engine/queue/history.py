"""Job history entries: one capped Dragonfly list per monitor, newest first, compact records.

A stored entry is `[!]<token>|<event>|<fields>`: the lease token the job ran under
(`tick:attempt:worker:claimed_ms`, already in Dragonfly, so finishJobs prepends it instead of the
worker sending it twice), `!` when the lease had been lost (a stale finish), and the event's
fields, positional and `|`-separated, free text last:

    c|started_ms|duration_ms|lateness_ms|outcome|kind|error     checked
    l|why                                                        released
    r|why                                                        recovered

About 90 bytes a check against ~220 as JSON objects: at 20 entries per monitor that is the
difference between ~2 and ~5 GB of Dragonfly memory for 1,000,000 monitors, and a third less
to send and push per check. `decode` turns an entry back into the dict `history` prints (and still
reads the JSON entries written by earlier versions until their lists expire).
"""
from __future__ import annotations

import orjson

EVENTS = {"c": "checked", "l": "released", "r": "recovered"}


def checked(started_ms: int, duration_ms: float, lateness_ms: float, outcome: str, kind: str,
            error: str) -> bytes:
    return b"c|%d|%.1f|%.1f|%s|%s|%s" % (started_ms, duration_ms, lateness_ms, outcome.encode(),
                                        kind.encode(), error[:200].encode("utf-8", "replace"))


def released(why: str) -> bytes:
    return b"l|" + why[:200].encode("utf-8", "replace")


def recovered(token: str | bytes, why: str) -> bytes:
    """A whole stored entry (recoveries are recorded by the caller, not by a script)."""
    if isinstance(token, bytes):
        token = token.decode("utf-8", "replace")
    return f"{token}|r|{why}".encode("utf-8", "replace")


def decode(raw: bytes) -> dict:
    if raw[:1] == b"{":  # written by an earlier version
        json, stale, _ = raw.partition(b" (stale")
        return orjson.loads(json) | ({"stale": True} if stale else {})
    text = raw.decode("utf-8", "replace")
    stale = text.startswith("!")
    token, _, rest = text.lstrip("!").partition("|")
    tick, _, rest_token = token.partition(":")
    attempt, _, worker_claimed = rest_token.partition(":")
    worker, _, claimed = worker_claimed.rpartition(":")
    event, _, fields = rest.partition("|")
    out: dict = {"event": EVENTS.get(event, event), "tick": _int(tick), "attempt": _int(attempt),
                 "worker": worker, "claimed_at": _int(claimed)}
    if event == "c":
        started, duration, lateness, outcome, kind, error = (fields.split("|", 5) + [""] * 6)[:6]
        out |= {"started_at": _int(started), "duration_ms": _float(duration),
                "lateness_ms": _float(lateness), "outcome": outcome, "kind": kind, "error": error}
    else:
        out["why"] = fields
    if stale:
        out["stale"] = True
    return out


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        return 0


def _float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return 0.0
