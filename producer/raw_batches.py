"""The raw format's batching: operations collect per destination partition into batches that close at an event
count, a byte size (never above what the topic accepts) or a linger time. Pure bookkeeping, no Kafka."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kafkashake.oplog.entry import Operation
from kafkashake.schemas.codec import encode_raw_batch, raw_record
from kafkashake.schemas.partitioning import canonical_json

Acknowledge = Callable[[], None]
# Avro framing of one record besides its event's BSON: the varint lengths and the short fields.
RECORD_OVERHEAD_BYTES = 48
# The container's header (magic, schema, codec, sync marker) and one block's framing.
CONTAINER_OVERHEAD_BYTES = len(encode_raw_batch([])) + 32


@dataclass
class RawBatch:
    records: list[dict[str, Any]] = field(default_factory=list)
    acknowledgements: list[Acknowledge] = field(default_factory=list)
    size: int = CONTAINER_OVERHEAD_BYTES
    started: float = field(default_factory=time.monotonic)
    namespaces: set[str] = field(default_factory=set)
    ops: set[str] = field(default_factory=set)
    newest: Any = None
    snapshot: bool = True
    largest: tuple[int, str] = (0, "")

    def describe(self) -> str:
        """Which event makes this batch big, for messages about its size."""
        size, what = self.largest
        return f"a raw batch of {len(self.records)} events, the largest {what} ({size} bytes)"


def record_size(operation: Operation, document_id: str | None) -> int:
    return len(operation.value) + len(operation.ns) + len(operation.op) + len(document_id or "") + RECORD_OVERHEAD_BYTES


class RawBatches:
    """Open batches by (topic, partition), in the order they were opened."""

    def __init__(self, max_events: int, max_bytes: int, linger_s: float) -> None:
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._linger_s = linger_s
        self._open: dict[tuple[str, int], RawBatch] = {}

    def __bool__(self) -> bool:
        return bool(self._open)

    def add(self, topic: str, partition: int, operation: Operation, acknowledge: Acknowledge,
            limit_bytes: int) -> Iterator[tuple[str, int, RawBatch]]:
        """Add one operation; yields the batches that are now closed: the open one if this record would take it
        over `limit_bytes` (the topic's limit for a message value), then this one if it is full."""
        document_id = canonical_json(operation.document_id) if operation.document_id is not None else None
        size = record_size(operation, document_id)
        key = (topic, partition)
        batch = self._open.get(key)
        if batch is not None and batch.records and batch.size + size > limit_bytes:
            yield topic, partition, self._open.pop(key)
            batch = None
        if batch is None:
            batch = self._open[key] = RawBatch()
        batch.records.append(raw_record(operation.ts, operation.op, operation.ns, document_id, operation.wall,
                                        operation.txn, operation.value))
        batch.acknowledgements.append(acknowledge)
        batch.size += size
        batch.namespaces.add(operation.ns)
        batch.ops.add(operation.op)
        batch.newest = operation.ts
        batch.snapshot = batch.snapshot and operation.snapshot
        if size > batch.largest[0]:
            batch.largest = (size, f"{operation.op} on {operation.ns} _id {document_id}")
        if len(batch.records) >= self._max_events or batch.size >= min(self._max_bytes, limit_bytes):
            yield topic, partition, self._open.pop(key)

    def due(self, now: float | None = None) -> Iterator[tuple[str, int, RawBatch]]:
        """Batches that have waited their linger time. The first open batch is the oldest, so most calls look at
        one batch only."""
        deadline = (time.monotonic() if now is None else now) - self._linger_s
        while self._open:
            (topic, partition), oldest = next(iter(self._open.items()))
            if oldest.started > deadline:
                return
            yield topic, partition, self._open.pop((topic, partition))

    def drain(self, topics: set[str] | None = None) -> Iterator[tuple[str, int, RawBatch]]:
        """Close every open batch (of `topics`, if given)."""
        for topic, partition in [key for key in self._open if topics is None or key[0] in topics]:
            yield topic, partition, self._open.pop((topic, partition))
