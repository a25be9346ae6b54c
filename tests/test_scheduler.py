"""The scheduler's syncs in-process against the real PostgreSQL and Redis: changes larger than one
chunk are streamed, applied once each, and logged as one summary line."""
from __future__ import annotations

import logging

from engine.queue import Queue, connect
from engine.scheduler import SYNC_CHUNK, Scheduler

N = 2 * SYNC_CHUNK + 500  # three chunks


async def test_bulk_update_is_synced_in_chunks(db, redis, settings, caplog):
    await db.copy_records_to_table(
        "monitors", records=[(i, "tcp", "127.0.0.1", 9, 60) for i in range(1, N + 1)],
        columns=["id", "type", "host", "port", "interval_seconds"])
    client = connect(settings.dragonfly)
    queue = Queue(client, settings.dragonfly.prefix, settings.queue)
    await queue.prepare()
    scheduler = Scheduler(settings, queue, "test/1")
    try:
        assert await scheduler._hold_lock()
        await scheduler.full_sync()
        assert len(await queue.monitor_ids()) == N

        # One bulk change touching every row: 60 s → 30 s everywhere, 3 disabled, 2 deleted.
        await db.execute("UPDATE monitors SET interval_seconds = 30")
        await db.execute("UPDATE monitors SET enabled = false WHERE id IN (5, 15000, 20400)")
        await db.execute("DELETE FROM monitors WHERE id IN (7, 20499)")
        caplog.clear()
        caplog.set_level(logging.INFO, "engine.scheduler")
        await scheduler.incremental_sync()

        ids = await queue.monitor_ids()
        assert ids == set(range(1, N + 1)) - {5, 15000, 20400, 7, 20499}
        confs = {int(k): v.decode() for pk in queue.keys.partitions
                 for k, v in (await client.hgetall(pk.conf)).items()}
        assert {c.split(":")[0] for c in confs.values()} == {"30000"}  # every row applied
        lines = [r.getMessage() for r in caplog.records]
        assert f"Scheduled {N - 5} monitors (0 new, {N - 5} rescheduled)" in lines, lines
        assert "Unscheduled 3 disabled or invalid monitors" in lines, lines
        assert "Removed 2 deleted monitors from the queue" in lines, lines

        caplog.clear()
        await scheduler.incremental_sync()  # nothing changed since: nothing applied again
        assert not [m for m in (r.getMessage() for r in caplog.records) if "cheduled" in m]
    finally:
        await scheduler.close()
        await client.aclose()
