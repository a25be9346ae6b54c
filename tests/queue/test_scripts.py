"""The queue's Lua scripts against a real Redis and a real cluster-mode node."""
from __future__ import annotations

import asyncio
import re

import pytest
from redis.exceptions import ResponseError

from engine.models import MonitorSpec
from engine.queue import ACK, RELEASE, RETRY, Finish, Queue, phase_ms
from engine.queue import history as job_history
from engine.queue.scripts import LUA_DIR, Scripts
from engine.settings import QueueSettings

WORKER = "host-a/100"


def make_queue(redis, **kw) -> Queue:
    return Queue(redis, redis.queue_prefix, QueueSettings(partitions=4, lease_margin_ms=kw.pop("margin", 5000), **kw),
                 strict_scripts=getattr(redis, "strict_scripts", False))


def spec(mid: int, interval: int = 1, timeout_ms: int = 1000) -> MonitorSpec:
    return MonitorSpec(id=mid, type="tcp", interval_s=interval, timeout_ms=timeout_ms, host="127.0.0.1", port=1)


def entry(n: int = 0) -> bytes:
    return job_history.checked(1_700_000_000_000 + n, 12.5, 3.25, "up", "", f"n={n}")


async def claim_all(q: Queue, worker: str = WORKER, per: int = 100):
    return await q.claim([(p, per) for p in range(len(q.keys.partitions))], worker)


async def wait_due(q: Queue, ids: set[int], timeout: float = 3.0):
    """Claim until every id in `ids` was claimed (their first ticks are spread over the interval)."""
    got = {}
    deadline = asyncio.get_running_loop().time() + timeout
    while set(got) != ids and asyncio.get_running_loop().time() < deadline:
        _, _, jobs = await claim_all(q)
        got.update({j.id: j for j in jobs})
        await asyncio.sleep(0.02)
    assert set(got) == ids
    return got


def test_every_redis_call_uses_declared_keys():
    """No script builds a key name: each key argument of redis.call is KEYS[...]."""
    keyless = {"TIME"}
    for path in LUA_DIR.glob("*.lua"):
        body = path.read_text().split("]]", 1)[1]
        for cmd, arg in re.findall(r"redis\.call\('(\w+)'\s*(?:,\s*([^,)]+))?", body):
            if cmd in keyless:
                continue
            assert arg.strip().startswith("KEYS["), f"{path.name}: {cmd} touches {arg!r}, not KEYS[..]"
        # Batched calls go through call_list(cmd, k, list), which calls redis.call(cmd, KEYS[k], ...).
        for cmd, k in re.findall(r"call_list\('(\w+)',\s*([^,)]+)", body):
            assert k.strip().isdigit(), f"{path.name}: call_list('{cmd}', {k}) does not name a KEYS index"
        if "function call_list" in body:
            assert "redis.call(cmd, KEYS[k]" in body


def test_divisions_stay_integers_on_lua_54():
    """Dragonfly runs Lua 5.4, where `/` always makes a float and a float argument to redis.call
    is sent as "2.0" (a rank or count command then fails); Redis' Lua 5.1 hides this. Every
    division in a script is therefore inside math.floor(...), which gives an integer on 5.4."""
    for path in LUA_DIR.glob("*.lua"):
        body = path.read_text().split("]]", 1)[1]
        for n, line in enumerate(body.splitlines(), 1):
            code = line.split("--", 1)[0]
            for m in re.finditer(r"(?<![/-])/(?!/)", code):
                assert "math.floor(" in code[: m.start()], f"{path.name}: {line.strip()!r} divides outside math.floor"


def test_loader_checks_key_count():
    scripts = Scripts()
    with pytest.raises(ValueError, match="takes 5 keys"):
        scripts.claim.args(["a"], [])
    assert scripts.finish.variadic and not scripts.claim.variadic


@pytest.mark.parametrize("prelude, body, error", [
    ("#!lua\n", "redis.call('GET', KEYS[1]) return redis.call('GET', '{other}:x')", "same slot"),
    (None, "return redis.call('GET', '{t:0}:undeclared')", "undeclared key"),
])
async def test_strict_mode_rejects_bad_key_access(services, prelude, body, error):
    """The cluster-mode run really catches a script touching a cross-slot or undeclared key."""
    import redis.asyncio as aioredis

    from engine.queue.scripts import STRICT_PRELUDE
    client = aioredis.Redis(host="127.0.0.1", port=int(services["UE_TEST_CLUSTER_PORT"]))
    try:
        with pytest.raises(ResponseError, match=error):
            await client.eval((prelude or STRICT_PRELUDE) + body, 1, "{t:0}:due")
        assert await client.eval(STRICT_PRELUDE + "return redis.call('EXISTS', KEYS[1])", 1, "{t:0}:due") == 0
    finally:
        await client.aclose()


async def test_claim_leases_once_and_ack_is_fixed_rate(any_redis):
    q = make_queue(any_redis)
    await q.prepare()
    assert await q.upsert([spec(i) for i in range(1, 9)]) == (8, 0)
    jobs = await wait_due(q, set(range(1, 9)))
    for job in jobs.values():
        assert job.attempt == 1
        assert job.tick_ms % 1000 == phase_ms(job.id, 1000)  # phase-stable tick
    # In flight: not claimable again, in `active` with a lease.
    _, _, again = await claim_all(q)
    assert not {j.id for j in again} & set(jobs)
    depth = await q.depth()
    assert sum(depth["in_flight"]) == 8
    done, stale = (await q.finish([Finish(j, ACK, 0, entry()) for j in jobs.values()]))[:2]
    assert (done, stale) == (8, 0)
    for job in jobs.values():
        pk = q.keys.partition_of(job.id)
        score = await any_redis.zscore(pk.due, job.id)
        now = await q.server_time_ms()
        assert score > now - 50 and (score - job.tick_ms) % 1000 == 0  # the next tick after now
        assert await any_redis.zscore(pk.active, job.id) is None


async def test_retry_keeps_tick_and_counts_attempts(any_redis):
    q = make_queue(any_redis)
    await q.upsert([spec(5)])
    job = (await wait_due(q, {5}))[5]
    await q.finish([Finish(job, RETRY, 100, entry())])
    await asyncio.sleep(0.15)
    _, _, jobs = await claim_all(q)
    (retry,) = jobs
    assert (retry.id, retry.tick_ms, retry.attempt) == (5, job.tick_ms, 2)
    await q.finish([Finish(retry, RELEASE, 0, entry())])
    _, _, jobs = await claim_all(q)
    assert (jobs[0].tick_ms, jobs[0].attempt) == (job.tick_ms, 2)


async def test_expired_lease_is_recovered_and_late_ack_is_stale(any_redis):
    q = make_queue(any_redis, margin=1)
    await q.upsert([spec(7, timeout_ms=50)])
    job = (await wait_due(q, {7}))[7]
    assert await q.recover() == 0        # lease not expired yet
    await asyncio.sleep(0.1)
    assert await q.recover() == 1
    _, _, jobs = await claim_all(q, worker="host-b/200")
    assert [j.id for j in jobs] == [7] and jobs[0].attempt == 1
    assert (await q.finish([Finish(job, ACK, 0, entry())]))[:2] == (0, 1)   # the old lease lost
    assert (await q.finish([Finish(jobs[0], ACK, 0, entry())]))[:2] == (1, 0)
    hist = await q.history(7)
    assert hist[0]["event"] == "checked" and hist[1].get("stale") and hist[2]["event"] == "recovered"


async def test_release_dead_worker_jobs_at_once(any_redis):
    q = make_queue(any_redis)
    await q.upsert([spec(i, timeout_ms=60_000) for i in (1, 2, 3)])
    await wait_due(q, {1, 2, 3})
    assert await q.recover(worker="host-a/999") == 0
    assert await q.recover(worker=WORKER) == 3
    _, _, jobs = await claim_all(q)
    assert {j.id for j in jobs} == {1, 2, 3}


async def test_interval_change_and_removal(any_redis):
    q = make_queue(any_redis)
    await q.upsert([spec(1, interval=100), spec(2, interval=100)])
    pk = q.keys.partition_of(1)
    assert await q.upsert([spec(1, interval=100)]) == (0, 0)  # unchanged: stays put
    assert await q.upsert([spec(1, interval=3)]) == (0, 1)
    score = await any_redis.zscore(pk.due, 1)
    assert score % 3000 == phase_ms(1, 3000)
    assert await q.remove([1, 2]) == 2
    assert await q.monitor_ids() == set()
    assert await any_redis.zcard(pk.due) == 0


async def test_removed_while_in_flight_is_not_rescheduled(any_redis):
    q = make_queue(any_redis)
    await q.upsert([spec(3)])
    job = (await wait_due(q, {3}))[3]
    await q.remove([3])
    assert (await q.finish([Finish(job, ACK, 0, entry())]))[:2] == (1, 0)
    assert await q.monitor_ids() == set()
    assert await any_redis.zcard(q.keys.partition_of(3).due) == 0


async def test_history_is_capped(any_redis):
    q = make_queue(any_redis, history_len=3)
    await q.upsert([spec(4)])
    job = (await wait_due(q, {4}))[4]
    for i in range(5):
        await q.finish([Finish(job, RELEASE, 0, entry(n=i))])
        job = (await wait_due(q, {4}))[4]
    hist = await q.history(4)
    assert [h["error"] for h in hist] == ["n=4", "n=3", "n=2"]
    for i in range(5, 12):
        await q.finish([Finish(job, RELEASE, 0, entry(n=i))])
        job = (await wait_due(q, {4}))[4]
    assert await any_redis.llen(q.keys.partition_of(4).history(4)) <= 4  # trimmed past cap + cap/4
    assert [h["error"] for h in await q.history(4)] == ["n=11", "n=10", "n=9"]
    assert 0 < await any_redis.ttl(q.keys.partition_of(4).history(4)) <= 86_400


async def test_partition_count_is_checked(any_redis):
    await make_queue(any_redis).prepare()
    from engine.errors import SettingsError
    with pytest.raises(SettingsError, match="partitions"):
        await Queue(any_redis, any_redis.queue_prefix, QueueSettings(partitions=8)).prepare()


async def test_history_records_the_lease_and_the_check(any_redis):
    """An entry is the lease token the job ran under plus the check's fields; `!` marks a finish
    whose lease had been lost; recoveries name why. Every field comes back as written."""
    q = make_queue(any_redis, margin=1)
    await q.upsert([spec(9, timeout_ms=50)])
    job = (await wait_due(q, {9}))[9]
    detail = job_history.checked(job.claimed_ms + 7, 41.26, 7.04, "down", "timeout", "no answer | in 50 ms")
    await q.finish([Finish(job, RETRY, 0, detail)])
    retry = (await wait_due(q, {9}))[9]
    await asyncio.sleep(0.1)
    assert await q.recover() == 1
    await q.finish([Finish(retry, RELEASE, 0, job_history.released("worker shutting down"))])  # stale
    newest, recovered, checked = await q.history(9)
    assert checked == {"event": "checked", "tick": job.tick_ms, "attempt": 1, "worker": WORKER,
                       "claimed_at": job.claimed_ms, "started_at": job.claimed_ms + 7,
                       "duration_ms": 41.3, "lateness_ms": 7.0, "outcome": "down", "kind": "timeout",
                       "error": "no answer | in 50 ms"}
    assert recovered == {"event": "recovered", "tick": job.tick_ms, "attempt": 2, "worker": WORKER,
                         "claimed_at": retry.claimed_ms, "why": "stalled: lease expired"}
    assert newest == {"event": "released", "tick": job.tick_ms, "attempt": 2, "worker": WORKER,
                      "claimed_at": retry.claimed_ms, "why": "worker shutting down", "stale": True}
    raw = await any_redis.lindex(q.keys.partition_of(9).history(9), 2)
    assert len(raw) < 110, raw  # compact: ~220 bytes as a JSON object


def test_history_reads_entries_of_earlier_versions():
    old = b'{"event":"checked","tick":5,"attempt":1,"worker":"w/1","outcome":"up"} (stale: lease lost)'
    assert job_history.decode(old) == {"event": "checked", "tick": 5, "attempt": 1, "worker": "w/1",
                                       "outcome": "up", "stale": True}


async def test_large_batches_are_claimed_and_finished_in_one_call(any_redis):
    """More jobs in one call than the scripts pass to one command (1,000 arguments): all are
    leased once, finished once, and a job repeated in a batch is finished once, then stale."""
    q = make_queue(any_redis)
    ids = list(range(4, 4 * 1501, 4))  # 1,500 monitors, all in partition 0
    await q.upsert([spec(i) for i in ids])
    await asyncio.sleep(1.05)  # every first tick (phases spread over 1 s) is due
    _, _, jobs = await q.claim([(0, 5000)], WORKER)
    assert sorted(j.id for j in jobs) == ids
    pk = q.keys.partitions[0]
    assert await any_redis.zcard(pk.active) == 1500 and await any_redis.zcard(pk.due) == 0
    batch = [Finish(j, ACK, 0, entry()) for j in jobs] + [Finish(jobs[0], ACK, 0, entry())]
    assert (await q.finish(batch))[:2] == (1500, 1)
    assert await any_redis.zcard(pk.active) == 0 and await any_redis.zcard(pk.due) == 1500
    assert await any_redis.hlen(pk.run) == 0
    assert [h.get("stale", False) for h in await q.history(jobs[0].id)] == [True, False]
