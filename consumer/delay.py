"""`--target-delay`: no event is applied before its source time plus the delay.

Every message is checked (MongoShake checked only the first event of a batch, its issues #709/#710). A
partition whose next message is not yet due is rewound to that message and paused, and resumed once it is
due, so the backlog waits in Kafka rather than in memory and group heartbeats carry on."""
from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Mapping
from typing import Any

PartitionKey = tuple[str, int]


def source_time(fields: Mapping[str, Any]) -> float:
    """Seconds since the epoch when the event happened at the source. `wall` (milliseconds) is preferred; `ts` only
    has whole seconds, so it is rounded up: an event is never taken as older than it is."""
    wall = fields.get("wall")
    if isinstance(wall, _dt.datetime):
        if wall.tzinfo is None:
            wall = wall.replace(tzinfo=_dt.timezone.utc)
        return wall.timestamp()
    ts = fields.get("ts")
    return float(ts.time + 1) if ts is not None else 0.0


class DelayGate:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.paused: dict[PartitionKey, float] = {}

    def due_at(self, newest_event_time: float) -> float:
        return newest_event_time + self.delay_s

    def is_due(self, newest_event_time: float, now: float | None = None) -> bool:
        return self.delay_s <= 0 or self.due_at(newest_event_time) <= (time.time() if now is None else now)

    def hold(self, partition: PartitionKey, newest_event_time: float) -> None:
        self.paused[partition] = self.due_at(newest_event_time)

    def release_due(self, now: float | None = None) -> list[PartitionKey]:
        now = time.time() if now is None else now
        due = [partition for partition, at in self.paused.items() if at <= now]
        for partition in due:
            del self.paused[partition]
        return due

    def forget(self, partitions: list[PartitionKey]) -> None:
        for partition in partitions:
            self.paused.pop(partition, None)

    def seconds_until_next(self, default: float) -> float:
        if not self.paused:
            return default
        return max(0.01, min(default, min(self.paused.values()) - time.time()))
