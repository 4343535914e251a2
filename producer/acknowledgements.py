"""Which of the things handed to Kafka are acknowledged, in the order they were handed over.

One tracker serves the three sources: oplog entries (their positions), change events (their resume tokens), and a
copy's batches of documents. Each handed-over thing gets a slot that expects some number of acknowledgements (the
messages made from it); `settle()` pops the leading slots that have them all, so a source moves its checkpoint
only past things that, with everything before them, Kafka has. O(1) per acknowledgement."""
from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Slot(Generic[T]):
    __slots__ = ("value", "remaining")

    def __init__(self, value: T, remaining: int) -> None:
        self.value = value
        self.remaining = remaining

    def acknowledge(self) -> None:
        self.remaining -= 1


class AckQueue(Generic[T]):
    def __init__(self) -> None:
        self._slots: deque[Slot[T]] = deque()

    def __len__(self) -> int:
        return len(self._slots)

    def add(self, value: T, expected: int = 1) -> Slot[T]:
        slot = Slot(value, expected)
        self._slots.append(slot)
        return slot

    def settle(self) -> list[T]:
        """The values of the leading slots that are fully acknowledged, removed, oldest first."""
        slots, settled = self._slots, []
        while slots and slots[0].remaining <= 0:
            settled.append(slots.popleft().value)
        return settled

    def oldest(self) -> T | None:
        """The oldest value still waiting (after settling), if any."""
        self.settle()
        return self._slots[0].value if self._slots else None
