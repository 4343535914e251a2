"""What one poll brought, and its write on its way to the destination."""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

from kafkashake.consumer.applier import Prepared
from kafkashake.consumer.apply_report import ApplyReport
from kafkashake.consumer.checkpoint import PartitionPosition
from kafkashake.consumer.intake import PartitionKey, Received


@dataclass
class Batch:
    """What one poll brought: messages to apply, messages moved past, partitions held."""

    to_apply: list[Received] = field(default_factory=list)
    # Messages whose events are applied in part (up to the exit point): their partitions stay before them.
    partly: list[Received] = field(default_factory=list)
    passed: list[Received] = field(default_factory=list)
    held: set[PartitionKey] = field(default_factory=set)

    def applying(self) -> list[Received]:
        return self.to_apply + self.partly

    def partitions(self) -> set[PartitionKey]:
        return {received.where for received in self.to_apply + self.partly + self.passed} | self.held


@dataclass
class Pending:
    """A batch's events prepared for the writer, then handed to it, and the checkpoint to save once its write is
    done."""

    batch: Batch
    prepared: Prepared | None
    checkpoint: list[PartitionPosition]
    # Partitions with messages in the batch or events in its write (the sequencer releases events of others).
    busy: set[PartitionKey]
    marking: Future[None] | None = None
    written: Future[ApplyReport] | None = None
