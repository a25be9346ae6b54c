"""Status-change notifications: LISTEN on 'monitor_status' while a real engine checks a loopback
target that flips between up and down; exactly one notification per change of status."""
from __future__ import annotations

import asyncio
import json
from datetime import datetime

import asyncpg
from aiohttp import web

from engine.admin import insert_monitors, normalize
from tests.conftest import TEST_DB, ch_rows
from tests.targets import free_port

FAST = {"UE_QUEUE_BACKOFF_MS": "200", "UE_SINKS_FLUSH_MS": "200", "UE_SCHEDULER_SYNC_MS": "300"}


async def flipping_target(state: dict) -> tuple[web.AppRunner, int]:
    async def flip(_):
        return web.Response(status=200 if state["up"] else 503, text="state")

    async def ok(_):
        return web.Response(text="fine")

    app = web.Application()
    app.add_routes([web.get("/flip", flip), web.get("/ok", ok)])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def changes_from_results(rows: list[dict], retries: int) -> list[tuple[str, str]]:
    """The status changes ClickHouse implies: final outcomes in tick order (a success, or the last
    attempt's failure), with repeats collapsed, starting from 'pending'."""
    finals = [("up" if r["ok"] else "down") for r in sorted(rows, key=lambda r: (r["tick"], r["attempt"]))
              if r["ok"] or r["attempt"] == retries + 1]
    changes, current = [], "pending"
    for status in finals:
        if status != current:
            changes.append((current, status))
            current = status
    return changes


async def test_one_notification_per_status_change(db, engine, ch, settings):
    state = {"up": True}
    runner, port = await flipping_target(state)
    base = f"http://127.0.0.1:{port}"
    flip, flip_retry, steady = await insert_monitors(db, [
        normalize({"url": f"{base}/flip", "interval_seconds": 1, "retries": 0}),
        normalize({"url": f"{base}/flip", "interval_seconds": 1, "retries": 1}),
        normalize({"url": f"{base}/ok", "interval_seconds": 1, "retries": 0})])
    got: list[dict] = []
    listener = await asyncpg.connect(settings.postgres.dsn)
    await listener.add_listener("monitor_status", lambda *a: got.append(json.loads(a[3])))
    proc = engine(**FAST)
    try:
        await proc.wait_for_log("queue ready")
        for up in (True, False, True, False):
            state["up"] = up
            await asyncio.sleep(3)
    finally:
        assert await proc.stop() == 0
        await runner.cleanup()
    await asyncio.sleep(0.5)  # the last flush's notifications are delivered after its commit
    await listener.close()

    rows = await ch_rows(ch, f"SELECT monitor_id, toUInt32(scheduled_at) AS tick, attempt, ok "
                             f"FROM {TEST_DB}.check_results")
    final = {r["monitor_id"]: r for r in await db.fetch("SELECT * FROM monitor_status")}
    for mid, retries in ((flip, 0), (flip_retry, 1), (steady, 0)):
        mine = [n for n in got if n["monitor_id"] == mid]
        expected = changes_from_results([r for r in rows if r["monitor_id"] == mid], retries)
        assert [(n["old"], n["new"]) for n in mine] == expected, (mid, mine)
        assert mine[-1]["new"] == final[mid]["status"]
        assert datetime.fromisoformat(mine[-1]["at"]) == final[mid]["status_changed_at"]
        for n in mine:
            assert set(n) == {"monitor_id", "old", "new", "at", "error"}
            assert (n["error"] is None) == (n["new"] == "up")
    assert len([n for n in got if n["monitor_id"] == flip]) >= 4  # pending>up>down>up>down
    assert [(n["old"], n["new"]) for n in got if n["monitor_id"] == steady] == [("pending", "up")]
