"""The oplog fetch method: where to start, what to read, and which position is safe to checkpoint."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from bson.timestamp import Timestamp

from kafkashake.oplog import position
from kafkashake.oplog.entry import Operation, routing_view
from kafkashake.producer.checkpoint import Checkpoint
from kafkashake.producer.acknowledgements import Slot
from kafkashake.producer.delivery import DeliveryTracker
from kafkashake.producer.metrics import ProducerMetrics
from kafkashake.producer.operations import OperationExtractor
from kafkashake.producer.oplog_reader import IDLE, OplogReader

log = logging.getLogger("kafkashake.producer")
FETCH_METHOD = "oplog"
# Operations handed to the stream loop at once: it checks for pause, shutdown and acknowledgements between them.
TURN_OPERATIONS = 256

Pending = list[tuple[Operation, Slot[Timestamp]]]


def resolve_start(spec: str, reader: OplogReader) -> Timestamp:
    """The exclusive start position for `--start-position` when no checkpoint exists."""
    if spec == "latest":
        newest = reader.newest()
        return newest if newest is not None else Timestamp(int(time.time()), 0)
    if spec == "earliest":
        oldest = reader.oldest()
        return position.predecessor(oldest) if oldest is not None else Timestamp(0, 0)
    parsed = position.parse(spec)
    return parsed if "," in spec else position.predecessor(parsed)


class OplogSource:
    def __init__(self, reader: OplogReader, extractor: OperationExtractor, metrics: ProducerMetrics) -> None:
        self._reader = reader
        self._extractor = extractor
        self._metrics = metrics
        self._read_by_op: dict[str, Any] = {}
        self._tracker: DeliveryTracker | None = None

    def first_checkpoint(self, start_position: str) -> Checkpoint:
        return Checkpoint(resolve_start(start_position, self._reader), None, FETCH_METHOD)

    def start(self, saved: Checkpoint) -> None:
        start = saved.ts
        if saved.fetch_method != FETCH_METHOD:
            # A change-stream checkpoint's cluster time may be shared by several entries: re-read that time.
            start = position.predecessor(saved.ts)
            log.warning("checkpoint written by another fetch method: continuing from its time",
                        extra={"from": saved.fetch_method, "position": position.describe(start)})
        self._reader.check_within_window(start)
        self._tracker = DeliveryTracker(start)

    @property
    def tracker(self) -> DeliveryTracker:
        assert self._tracker is not None, "start() first"
        return self._tracker

    def changes(self) -> Iterator[Pending | None]:
        """Operations to publish, each with its delivery slot; None whenever the oplog has been read to its end."""
        tracker = self.tracker
        resume_at = tracker.read_through
        self._reader.check_within_window(resume_at)
        for batch in self._reader.tail(resume_at):
            if batch is IDLE:
                tracker.caught_up()
                yield None
                continue
            pending: Pending = []
            read_by_op: dict[str, int] = {}
            for raw in batch:
                entry = routing_view(raw)
                op = entry["op"]
                read_by_op[op] = read_by_op.get(op, 0) + 1
                tracker.read(entry["ts"])
                # A transaction's operations carry its commit's position, but a restart must read its first entry
                # again: until they are acknowledged, their slots hold the checkpoint below the oldest open one.
                held_from = self._extractor.hold_below()
                operations = self._extractor.extract(entry)
                if not operations:
                    self._metrics.events_filtered.inc()
                for operation in operations:
                    at = operation.ts if held_from is None else min(operation.ts, held_from)
                    pending.append((operation, tracker.sent(at)))
                if len(pending) >= TURN_OPERATIONS:
                    self._count_reads(read_by_op)
                    yield pending
                    pending = []
            self._count_reads(read_by_op)
            yield pending

    def _count_reads(self, read_by_op: dict[str, int]) -> None:
        for op, count in read_by_op.items():
            read = self._read_by_op.get(op)
            if read is None:
                read = self._read_by_op[op] = self._metrics.events_read.labels(op)
            read.inc(count)
        read_by_op.clear()

    def safe_checkpoint(self) -> Checkpoint:
        return Checkpoint(self.tracker.safe_position(self._extractor.hold_below()), None, FETCH_METHOD)

    def read_position(self) -> Timestamp:
        """The newest position read so far."""
        return self.tracker.last_read

    def in_sync(self) -> bool:
        return self.tracker.all_acknowledged() and self._extractor.hold_below() is None

    def window(self) -> tuple[Timestamp | None, Timestamp | None]:
        return self._reader.window()
