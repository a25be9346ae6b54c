"""Every Dragonfly key name, built in one place.

Queue keys of one partition share the hashtag `{prefix:p}`, so one Lua script only ever touches one
slot: it runs on Dragonfly without `allow-undeclared-keys` and on Redis Cluster. Global keys (leader
lock, heartbeats) are touched by plain commands only, never by scripts.
"""
from __future__ import annotations


class PartitionKeys:
    """The keys of one queue partition (see engine/queue/lua/*.lua headers for their shapes)."""

    __slots__ = ("index", "tag", "due", "active", "run", "conf", "spec", "core")

    def __init__(self, prefix: str, index: int) -> None:
        self.index = index
        self.tag = f"{{{prefix}:{index}}}"
        self.due = f"{self.tag}:due"        # ZSET id -> run-at ms
        self.active = f"{self.tag}:active"  # ZSET id -> lease deadline ms
        self.run = f"{self.tag}:run"        # HASH id -> "tick:attempt[:worker:claimed_ms]"
        self.conf = f"{self.tag}:conf"      # HASH id -> "interval_ms:lease_ms"
        self.spec = f"{self.tag}:spec"      # HASH id -> msgpack MonitorSpec
        self.core = [self.due, self.active, self.run, self.conf, self.spec]

    def history(self, monitor_id: int | str) -> str:
        return f"{self.tag}:h:{monitor_id}"  # LIST newest-first job lifecycle entries (capped)


class Keys:
    def __init__(self, prefix: str, partitions: int) -> None:
        self.prefix = prefix
        self.partitions = [PartitionKeys(prefix, p) for p in range(partitions)]
        self.scheduler_lock = f"{prefix}:scheduler:lock"   # STRING holder, PX lease
        self.sync_cursor = f"{prefix}:scheduler:cursor"    # STRING last synced updated_at
        self.epoch = f"{prefix}:epoch"                     # STRING; gone = store restarted empty
        self.layout = f"{prefix}:layout"                   # STRING partition count the queue was built with
        self.workers = f"{prefix}:workers"                 # HASH worker id -> heartbeat json
        self.stats = f"{prefix}:stats"                     # HASH probe host -> stats json

    def partition_of(self, monitor_id: int) -> PartitionKeys:
        return self.partitions[monitor_id % len(self.partitions)]
