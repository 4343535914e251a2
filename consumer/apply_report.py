"""What applying a batch did: events applied, passed over, in conflict, rejected, and parked."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from kafkashake.consumer.conflicts import Conflict
from kafkashake.consumer.decoder import Event
from kafkashake.consumer.write_plan import Write


@dataclass
class Rejection:
    event: Event
    reason: str
    error: str


@dataclass
class ApplyReport:
    applied: Counter = field(default_factory=Counter)
    passed_over: Counter = field(default_factory=Counter)
    conflicts: list[Conflict] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    # Every event parked once a write of changes is done (consumer/parked.py), of this batch or earlier ones.
    parked: list[Event] | None = None

    def merge(self, other: "ApplyReport") -> None:
        self.applied.update(other.applied)
        self.passed_over.update(other.passed_over)
        self.conflicts += other.conflicts
        self.rejected += other.rejected

    def written(self, writes: list[Write]) -> None:
        for w in writes:
            for event in (*w.along, w.event):
                self.applied[event.op] += 1


def where_in_kafka(event: Event) -> str:
    return f"{event.topic}/{event.partition}@{event.offset}"
