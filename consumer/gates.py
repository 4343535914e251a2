"""The checks a received message passes before its events are applied. Each answers apply, hold or pass:

- apply: its events go into this batch;
- hold: it and the rest of its partition wait (the consumer rewinds the partition to it and pauses it);
- pass: the consumer moves past it without applying anything (a DDL barrier another partition applied).

The barrier, the first of them, is in consumer/barrier.py.

The gates hold no Kafka or MongoDB client: what they need to know is passed in, so each is testable alone."""
from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bson.timestamp import Timestamp

from kafkashake.consumer.delay import source_time
from kafkashake.consumer.intake import PartitionKey, Received
from kafkashake.schemas import headers, snapshot

log = logging.getLogger("kafkashake.consumer")


class Verdict(enum.Enum):
    APPLY = "apply"
    HOLD = "hold"
    PASS = "pass"
    # Apply what the message's events were cut down to, then hold the partition at the message.
    APPLY_PART = "apply part"


# ----------------------------------------------------------------------------------------------- exit point


class ExitGate:
    """`--exit-at`: nothing after the exit point is applied. A partition is finished once the message it holds
    back has an event past the exit point, or once it applied a message whose watermark reaches it (the producer
    had published every change up to it: schemas/heartbeats.py)."""

    def __init__(self, exit_at: Timestamp) -> None:
        self.exit_at = exit_at
        self._passed: set[PartitionKey] = set()

    def check(self, received: Received) -> Verdict:
        """A message (a raw batch) may hold events before and after the exit point: those before it are applied
        (a partition's events are in source order, so they come first), then the partition waits there."""
        if not any(self.is_past(event.fields.get("ts")) for event in received.events):
            return Verdict.APPLY
        self._passed.add(received.where)
        before = [event for event in received.events if not self.is_past(event.fields.get("ts"))]
        if not before:
            return Verdict.HOLD
        received.events = before
        return Verdict.APPLY_PART

    def is_past(self, ts: Timestamp | None) -> bool:
        return ts is not None and ts > self.exit_at

    def finished(self, assigned: Iterable[PartitionKey], watermark: Callable[[PartitionKey], Timestamp | None]) -> bool:
        partitions = list(assigned)
        if not partitions:
            return False
        return all(self.partition_finished(p, watermark(p)) for p in partitions)

    def partition_finished(self, where: PartitionKey, watermark: Timestamp | None) -> bool:
        return where in self._passed or (watermark is not None and watermark >= self.exit_at)

    def waiting(self) -> set[PartitionKey]:
        """Partitions held at the exit point: they stay paused whatever else resumes."""
        return set(self._passed)

    def forget(self, where: PartitionKey) -> None:
        self._passed.discard(where)


# ----------------------------------------------------------------------------------------------- delay


class DelayGate:
    """`--target-delay`: no event applies before its source time plus the delay (every event, not only the first
    of a batch: MongoShake #709/#710). A partition whose next message is not due waits in Kafka, paused."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.paused: dict[PartitionKey, float] = {}

    def check(self, received: Received, now: float | None = None) -> Verdict:
        if self.delay_s <= 0:
            return Verdict.APPLY
        # The copy of what already existed is not held back, only changes.
        newest = max((source_time(event.fields) for event in received.events
                      if not snapshot.is_snapshot(event.fields)), default=0.0)
        due_at = newest + self.delay_s
        if due_at <= (time.time() if now is None else now):
            return Verdict.APPLY
        self.paused[received.where] = due_at
        return Verdict.HOLD

    def release_due(self, now: float | None = None) -> list[PartitionKey]:
        now = time.time() if now is None else now
        due = [where for where, at in self.paused.items() if at <= now]
        for where in due:
            del self.paused[where]
        return due

    def forget(self, where: PartitionKey) -> None:
        self.paused.pop(where, None)

    def seconds_until_next(self, default: float) -> float:
        if not self.paused:
            return default
        return max(0.01, min(default, min(self.paused.values()) - time.time()))


# ----------------------------------------------------------------------------------------------- marking


@dataclass
class CopyOverlap:
    """Snapshot documents, and changes the copy may already hold (up to its completion event's `until`), apply so
    that they converge whatever the conflict policy, as mongod's initial sync applies the oplog."""

    until: dict[PartitionKey, Timestamp] = field(default_factory=dict)

    def mark(self, received: Received) -> None:
        where = received.where
        for event in received.events:
            fields = event.fields
            until = snapshot.completion_until(fields)
            if until is not None:
                self.until[where] = until
                log.info("copy complete in this partition; changes up to its end are applied as overlapping it",
                         extra={"topic": where[0], "partition": where[1], "until": headers.position_text(until)})
            elif snapshot.is_snapshot(fields):
                event.converge = True
            else:
                horizon, ts = self.until.get(where), fields.get("ts")
                if horizon is not None and ts is not None and ts <= horizon:
                    event.converge = True
