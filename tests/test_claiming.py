"""Claim pacing (pure logic: no servers needed)."""
from __future__ import annotations

import time

from engine.claiming import ClaimPlan


def test_first_claim_asks_every_partition_then_only_due_ones():
    plan = ClaimPlan(partitions=4, claim_batch=100, poll_ms=50, claim_min_ms=10)
    assert plan.wants(400) == [(0, 100), (1, 100), (2, 100), (3, 100)]
    now = time.time() * 1000
    plan.claimed([(p, 100) for p in range(4)], {0: int(now) - 5, 1: int(now) + 10_000, 2: -1, 3: -1},
                 {0: 3}, int(now), time.time(), time.time())
    assert plan.wants(400) == [(0, 100)]  # only partition 0 has something due
    assert not plan.was_full


def test_full_partition_is_asked_again_at_once_and_sleep_is_zero():
    plan = ClaimPlan(partitions=2, claim_batch=10, poll_ms=50, claim_min_ms=10)
    wants = plan.wants(20)
    now = time.time()
    plan.claimed(wants, {0: -1, 1: -1}, {0: 10}, int(now * 1000), now, now)
    assert plan.was_full and plan.sleep_s() == 0.0
    assert [p for p, _ in plan.wants(20)] == [0]


def test_sleeps_until_next_due_but_not_less_than_the_minimum_gap():
    plan = ClaimPlan(partitions=1, claim_batch=10, poll_ms=1000, claim_min_ms=10)
    wants = plan.wants(10)
    now = time.time()
    plan.claimed(wants, {0: int(now * 1000) + 300}, {}, int(now * 1000), now, now)
    assert 0.25 < plan.sleep_s() <= 0.31
    plan.claimed(wants, {0: int(now * 1000) + 1}, {}, int(now * 1000), now, now)
    assert 0.005 <= plan.sleep_s() <= 0.011  # due now, but claims stay 10 ms apart
    plan.learn(0, int(now * 1000) + 5000)  # a later time never hides an earlier one
    assert plan.next_due[0] == int(now * 1000) + 1


def test_budget_smaller_than_partitions_rotates():
    plan = ClaimPlan(partitions=8, claim_batch=10, poll_ms=50, claim_min_ms=0)
    first = plan.wants(3)
    plan.last_poll = 0
    second = plan.wants(3)
    assert len(first) == len(second) == 3 and {p for p, _ in first} != {p for p, _ in second}
