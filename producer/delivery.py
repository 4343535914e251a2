"""Which oplog position is safe to checkpoint, given what has been read and what Kafka has acknowledged.

The safe position is the highest `ts` such that every entry at or below it has been read and every
message built from those entries has been acknowledged. Several entries can share one `ts` (some servers
log a transaction that way), so a `ts` only becomes safe once a later `ts` has been read or the cursor
has caught up."""
from __future__ import annotations

from bson.timestamp import Timestamp

from kafkashake.oplog import position
from kafkashake.producer.acknowledgements import AckQueue, Slot


class DeliveryTracker:
    def __init__(self, start: Timestamp) -> None:
        self._pending: AckQueue[Timestamp] = AckQueue()
        self._last_read = start
        self._read_through = start
        self._safe = start

    @property
    def last_read(self) -> Timestamp:
        return self._last_read

    @property
    def read_through(self) -> Timestamp:
        """Every entry with `ts` at or below this has been read."""
        return self._read_through

    def read(self, ts: Timestamp) -> None:
        if ts > self._last_read:
            self._read_through = self._last_read
            self._last_read = ts

    def caught_up(self) -> None:
        self._read_through = self._last_read

    def sent(self, ts: Timestamp) -> Slot[Timestamp]:
        return self._pending.add(ts)

    def all_acknowledged(self) -> bool:
        """Everything read is acknowledged, and the source was read to its end."""
        return self._pending.oldest() is None and self._read_through == self._last_read

    def safe_position(self, hold_below: Timestamp | None = None) -> Timestamp:
        """The position to checkpoint now; it never moves backwards."""
        safe = self._read_through
        oldest = self._pending.oldest()
        if oldest is not None:
            safe = min(safe, position.predecessor(oldest))
        if hold_below is not None:
            safe = min(safe, position.predecessor(hold_below))
        if safe > self._safe:
            self._safe = safe
        return self._safe
