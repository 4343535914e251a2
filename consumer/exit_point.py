"""`--exit-at`: stop once every event at or before a source time has been applied (MongoShake's ExitPoint).

A partition is finished when its next message holds an event past the exit point (the message is left
unapplied and uncommitted), or when it has been read to its end and the exit time lies `settle_s` in the
past, so events at or before it have had time to arrive."""
from __future__ import annotations

import time

from bson.timestamp import Timestamp

PartitionKey = tuple[str, int]


class ExitPoint:
    def __init__(self, exit_at: Timestamp, settle_s: float = 5.0) -> None:
        self.exit_at = exit_at
        self._settle_s = settle_s
        self._passed: set[PartitionKey] = set()
        self._at_end: set[PartitionKey] = set()

    def is_past(self, ts: Timestamp | None) -> bool:
        return ts is not None and ts > self.exit_at

    def passed(self, partition: PartitionKey) -> None:
        self._passed.add(partition)

    def reached_end(self, partition: PartitionKey) -> None:
        self._at_end.add(partition)

    def received(self, partition: PartitionKey) -> None:
        self._at_end.discard(partition)

    def finished(self, assigned: list[PartitionKey], now: float | None = None) -> bool:
        if not assigned:
            return False
        settled = (time.time() if now is None else now) >= self.exit_at.time + 1 + self._settle_s
        return all(p in self._passed or (settled and p in self._at_end) for p in assigned)
