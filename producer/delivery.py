"""Which oplog position is safe to checkpoint, given what has been read and what Kafka has acknowledged.

The safe position is the highest `ts` such that every entry at or below it has been read and every
message built from those entries has been acknowledged. Several entries can share one `ts` (some servers
log a transaction that way), so a `ts` only becomes safe once a later `ts` has been read or the cursor
has caught up. Bookkeeping is O(1) per message: a FIFO of slots whose head is popped once acknowledged."""
from __future__ import annotations

from collections import deque

from bson.timestamp import Timestamp

from kafkashake.oplog import position


class DeliverySlot:
    __slots__ = ("ts", "acknowledged")

    def __init__(self, ts: Timestamp) -> None:
        self.ts = ts
        self.acknowledged = False


class DeliveryTracker:
    def __init__(self, start: Timestamp) -> None:
        self._pending: deque[DeliverySlot] = deque()
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

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def read(self, ts: Timestamp) -> None:
        if ts > self._last_read:
            self._read_through = self._last_read
            self._last_read = ts

    def caught_up(self) -> None:
        self._read_through = self._last_read

    def sent(self, ts: Timestamp) -> DeliverySlot:
        slot = DeliverySlot(ts)
        self._pending.append(slot)
        return slot

    def acknowledged(self, slot: DeliverySlot) -> None:
        slot.acknowledged = True

    def all_acknowledged(self) -> bool:
        """Everything read is acknowledged, and the source was read to its end."""
        pending = self._pending
        while pending and pending[0].acknowledged:
            pending.popleft()
        return not pending and self._read_through == self._last_read

    def safe_position(self, hold_below: Timestamp | None = None) -> Timestamp:
        """The position to checkpoint now; it never moves backwards."""
        pending = self._pending
        while pending and pending[0].acknowledged:
            pending.popleft()
        safe = self._read_through
        if pending:
            safe = min(safe, position.predecessor(pending[0].ts))
        if hold_below is not None:
            safe = min(safe, position.predecessor(hold_below))
        if safe > self._safe:
            self._safe = safe
        return self._safe
