"""Source order across partitions, for collections with a unique index besides `_id`.

With `--partition-by id` a document's changes stay in order in one partition, but two documents' changes sit in
different partitions. Where a unique index ties documents together (a value moved from one to another), applying
them out of source order makes the index refuse a write the source made: a lost change. The changes of such
collections ("ordered" collections: the destination has a unique index other than `_id` on them) are therefore held
here and applied in source time order across every partition of their topic:

- a partition's changes are in source order, so once a partition has given us a change at time T (or a watermark at
  or after T: schemas/heartbeats.py), every change of it before T is here or applied: it is *complete through* T;
- a held change at time t applies once every other partition of its topic is complete through t (partitions of
  other consumer instances tell through their checkpoints);
- changes released together apply in (time, partition, offset) order.

Other collections keep per-document parallelism. A partition's checkpoint never passes its oldest held change."""
from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bson.timestamp import Timestamp
from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from kafkashake.consumer.decoder import Event
from kafkashake.consumer.intake import PartitionKey, Received
from kafkashake.oplog import position
from kafkashake.runtime.retry import is_transient

log = logging.getLogger("kafkashake.consumer.sequencer")
# Above this many held changes a partition is paused (it is ahead of the others); resumed below half of it.
HELD_PER_PARTITION = 20_000
INDEXES_TTL_S = 30.0
ORDERABLE_OPS = ("i", "u", "d")


class UniqueIndexes:
    """Which destination collections have a unique index besides `_id`, read with listIndexes and remembered."""

    def __init__(self, client: MongoClient, ttl_s: float = INDEXES_TTL_S) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._known: dict[str, tuple[float, bool]] = {}
        self._ever_ordered: set[str] = set()

    def __call__(self, ns: str) -> bool:
        known = self._known.get(ns)
        if known is not None and time.monotonic() - known[0] < self._ttl_s:
            return known[1]
        db, _, coll = ns.partition(".")
        try:
            ordered = any(index.get("unique") and index.get("name") != "_id_"
                          for index in self._client[db][coll].list_indexes())
        except PyMongoError as exc:
            if known is not None:
                return known[1]
            if is_transient(exc) or not isinstance(exc, OperationFailure):
                raise
            log.warning("cannot list the destination collection's indexes: its changes are applied in source order, "
                        "as if it had a unique index", extra={"ns": ns, "error": str(exc)})
            ordered = True
        # Once in source order, always: changes held for order must not be overtaken by later ones of the same
        # documents let through freely (a unique index dropped, or listIndexes answering again).
        ordered = ordered or ns in self._ever_ordered
        if ordered:
            self._ever_ordered.add(ns)
        self._known[ns] = (time.monotonic(), ordered)
        return ordered

    def forget(self, ns: str | None = None) -> None:
        """Read again on next use: a DDL may have changed the indexes."""
        if ns is None:
            self._known.clear()
        else:
            self._known.pop(ns, None)


@dataclass(frozen=True)
class FirstHeld:
    first_offset: int
    ts: Timestamp
    position: tuple[int, int]


@dataclass
class _Held:
    event: Event
    first_offset: int


@dataclass
class _Partition:
    held: deque[_Held] = field(default_factory=deque)
    through: Timestamp | None = None
    paused: bool = False


class Sequencer:
    def __init__(self, is_ordered: Callable[[str], bool]) -> None:
        self._is_ordered = is_ordered
        self._partitions: dict[PartitionKey, _Partition] = {}

    def _partition(self, where: PartitionKey) -> _Partition:
        state = self._partitions.get(where)
        if state is None:
            state = self._partitions[where] = _Partition()
        return state

    def take(self, batch: Iterable[Received], destination_ns: Callable[[str], str]) -> list[Event]:
        """The events of `batch` to apply now; those of ordered collections are held here instead. A partition
        that already holds some holds every later change of an ordered collection too. Which collections are
        ordered is looked up once per batch."""
        ordered: dict[str, bool] = {}
        free: list[Event] = []
        newest: dict[PartitionKey, tuple[Timestamp | None, Timestamp | None]] = {}
        for received in batch:
            where = received.where
            state = self._partition(where)
            for event in received.events:
                fields = event.fields
                if fields["op"] in ORDERABLE_OPS:
                    ns = fields["ns"]
                    is_ordered = ordered.get(ns)
                    if is_ordered is None:
                        is_ordered = ordered[ns] = self._is_ordered(destination_ns(ns))
                    if is_ordered:
                        state.held.append(_Held(event, received.first_offset))
                        continue
                free.append(event)
            watermark, newest_ts = newest.get(where, (None, None))
            newest[where] = (position.later(watermark, received.watermark), position.later(newest_ts, received.ts))
        for where, (watermark, ts) in newest.items():
            self.saw(where, watermark)
            if ts is not None:
                self.saw(where, position.predecessor(ts))
        return free

    def saw(self, where: PartitionKey, through: Timestamp | None) -> None:
        """Every change of this partition at or before `through` has been taken (or applied)."""
        state = self._partition(where)
        if through is not None and (state.through is None or through > state.through):
            state.through = through

    def through(self, where: PartitionKey) -> Timestamp | None:
        state = self._partitions.get(where)
        return None if state is None else state.through

    def release(self, complete_through: Callable[[str, int], Timestamp | None],
                partition_count: Callable[[str], int]) -> list[Event]:
        """Held changes every other partition of their topic is complete through, in source order."""
        candidates: list[tuple[Timestamp, PartitionKey, int, int, Event]] = []
        for (topic, partition), state in self._partitions.items():
            if not state.held:
                continue
            marks = {other: complete_through(topic, other) for other in range(partition_count(topic)) if other != partition}
            if any(mark is None for mark in marks.values()):
                continue
            # Changes of one source time (a transaction's, or a copy's documents) apply in partition order: one waits
            # for that time only in the partitions before its own, else two instances holding some would wait for
            # each other for ever (each one's saved watermark stays before its own oldest held change).
            before = min((mark for other, mark in marks.items() if other < partition), default=None)
            after = min((mark for other, mark in marks.items() if other > partition), default=None)
            while state.held and _due(state.held[0].event.fields["ts"], before, after):  # type: ignore[arg-type]
                event = state.held.popleft().event
                candidates.append((event.fields["ts"], (topic, partition), event.offset, event.index, event))
        return [candidate[-1] for candidate in heapq.nsmallest(len(candidates), candidates,
                                                                 key=lambda c: (c[0], c[1], c[2], c[3]))]

    def first_held(self, where: PartitionKey) -> FirstHeld | None:
        """This partition's oldest held change: where its message begins, its time and its position."""
        state = self._partitions.get(where)
        if state is None or not state.held:
            return None
        oldest = state.held[0]
        return FirstHeld(oldest.first_offset, oldest.event.fields["ts"], oldest.event.position)

    def held(self, where: PartitionKey | None = None) -> int:
        if where is not None:
            state = self._partitions.get(where)
            return 0 if state is None else len(state.held)
        return sum(len(state.held) for state in self._partitions.values())

    def to_pause(self) -> list[PartitionKey]:
        """Partitions holding too much (far ahead of the others): to pause until they hold less."""
        due = [where for where, state in self._partitions.items()
               if not state.paused and len(state.held) >= HELD_PER_PARTITION]
        for where in due:
            self._partitions[where].paused = True
        return due

    def to_resume(self) -> list[PartitionKey]:
        due = [where for where, state in self._partitions.items()
               if state.paused and len(state.held) < HELD_PER_PARTITION // 2]
        for where in due:
            self._partitions[where].paused = False
        return due

    def paused(self) -> set[PartitionKey]:
        return {where for where, state in self._partitions.items() if state.paused}

    def forget(self, where: PartitionKey) -> None:
        self._partitions.pop(where, None)


def _due(ts: Timestamp, before: Timestamp | None, after: Timestamp | None) -> bool:
    """Whether a held change at `ts` may apply, given how far the partitions before and after its own are
    complete."""
    return (before is None or ts <= before) and (after is None or position.predecessor(ts) <= after)
