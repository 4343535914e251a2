"""The DDL barrier: a DDL event applies after every earlier event of its collection in every partition, and
before every later one, also when the partitions are spread over several consumer instances.

The producer sends each DDL to every partition of its topic. A partition that reaches it applies everything
before it, records its arrival in the destination (`kafkashake.ddl_barrier`), and waits. The arrival that
completes the set claims the DDL and applies it once; then every partition moves past it. A claim left by a
crashed instance can be taken over after `takeover_s` (DDL replays are harmless)."""
from __future__ import annotations

import datetime as _dt
import logging
import re
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymongo import ReturnDocument
from pymongo.collection import Collection

from kafkashake.consumer.gates import Verdict
from kafkashake.consumer.intake import PartitionKey, Received
from kafkashake.schemas import headers

log = logging.getLogger("kafkashake.consumer")

APPLIED = "applied"
WAITING = "waiting"
APPLYING = "applying"


class BarrierStore:
    def __init__(self, collection: Collection, group: str, takeover_s: float = 60.0) -> None:
        self._collection = collection
        self._group = group
        self._takeover = _dt.timedelta(seconds=takeover_s)
        self._instance = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"

    def _key(self, barrier: str) -> str:
        return f"{self._group}/{barrier}"

    def arrive(self, barrier: str, topic: str, partition: int, partitions: int) -> None:
        self._collection.update_one(
            {"_id": self._key(barrier)},
            {"$addToSet": {"arrived": f"{topic}/{partition}"},
             "$setOnInsert": {"partitions": partitions, "state": WAITING}},
            upsert=True,
        )

    def claim(self, barrier: str) -> bool:
        """True for the one caller that must apply the DDL now: every partition has arrived and nobody (alive)
        is applying it."""
        now = _dt.datetime.now(tz=_dt.timezone.utc)
        document = self._collection.find_one({"_id": self._key(barrier)})
        if document is None or document["state"] == APPLIED or len(document["arrived"]) < document["partitions"]:
            return False
        stale = now - self._takeover
        claimed = self._collection.find_one_and_update(
            {"_id": self._key(barrier), "$or": [{"state": WAITING},
                                                 {"state": APPLYING, "claimed_at": {"$lt": stale}}]},
            {"$set": {"state": APPLYING, "claimed_by": self._instance, "claimed_at": now}},
            return_document=ReturnDocument.AFTER,
        )
        return claimed is not None

    def mark_applied(self, barrier: str) -> None:
        self._collection.update_one({"_id": self._key(barrier)},
                                    {"$set": {"state": APPLIED, "applied_at": _dt.datetime.now(tz=_dt.timezone.utc)}})

    def is_applied(self, barrier: str) -> bool:
        document: Any = self._collection.find_one({"_id": self._key(barrier)}, projection={"state": 1})
        return document is not None and document["state"] == APPLIED


@dataclass(frozen=True)
class Arrival:
    barrier: str
    where: PartitionKey
    expected: int
    received: Received


class Subscription:
    """Which topics this consumer follows: one name, or a regular expression."""

    def __init__(self, topic: str, pattern: str) -> None:
        self._topic = topic
        self._pattern = re.compile(pattern) if pattern else None

    def follows(self, topic: str) -> bool:
        return topic == self._topic if self._pattern is None else self._pattern.match(topic) is not None


def expected_copies(received: Received, subscription: Subscription) -> int:
    """How many copies of a barrier this consumer's group must reach: those in the topics it follows."""
    spread = received.headers.get(headers.BARRIER_TOPICS)
    if not spread:
        return int(received.headers.get(headers.BARRIER_PARTITIONS, "1"))
    counts = [part.rpartition(":") for part in spread.split(",") if part]
    return sum(int(count) for topic, _, count in counts if subscription.follows(topic)) or 1


class Barriers:
    """The consumer's side of the protocol: a partition that reaches a barrier is held there; once everything
    before it is applied its arrival is recorded; the arrival that completes the set applies the DDL once; then
    every held partition is released, reads the barrier again, and moves past it."""

    def __init__(self, store: BarrierStore, ddl: bool, subscription: Subscription,
                 apply: Callable[[Received], Any], call: Callable[[Callable[[], Any], str], Any]) -> None:
        self._store = store
        self._ddl = ddl
        self._subscription = subscription
        self._apply = apply
        self._call = call
        self.waiting: dict[PartitionKey, Arrival] = {}
        self._unrecorded: list[Arrival] = []

    def barrier_of(self, received: Received) -> str | None:
        """DDL barriers with --ddl; a copy's DDL and barriers around a no-op (a synchronisation point) always."""
        follows = (self._ddl or received.headers.get(headers.SNAPSHOT) == "true"
                   or received.headers.get(headers.OPERATION) == "n")
        return received.headers.get(headers.BARRIER) if follows else None

    def check(self, received: Received) -> Verdict:
        barrier = self.barrier_of(received)
        if barrier is None:
            return Verdict.APPLY
        if self._is_applied(barrier):
            return Verdict.PASS
        arrival = Arrival(barrier, received.where, expected_copies(received, self._subscription), received)
        self.waiting[received.where] = arrival
        self._unrecorded.append(arrival)
        return Verdict.HOLD

    def _is_applied(self, barrier: str) -> bool:
        return self._call(lambda: self._store.is_applied(barrier), "reading a DDL barrier")

    def record_arrivals(self, still_busy: Callable[[PartitionKey], bool]) -> None:
        """Record the arrival of partitions that applied everything before their barrier (`still_busy` says which
        have not yet), and apply each barrier whose set is complete."""
        pending = []
        for arrival in self._unrecorded:
            if still_busy(arrival.where):
                pending.append(arrival)
                continue
            self._call(lambda: self._store.arrive(arrival.barrier, arrival.where[0], arrival.where[1],
                                                  arrival.expected), "recording a DDL arrival")
            self._apply_if_complete(arrival)
        self._unrecorded = pending

    def _apply_if_complete(self, arrival: Arrival) -> None:
        barrier = arrival.barrier
        if not self._call(lambda: self._store.claim(barrier), "claiming a DDL barrier"):
            return
        self._apply(arrival.received)
        self._call(lambda: self._store.mark_applied(barrier), "releasing a DDL barrier")
        log.info("DDL barrier passed: applied after every partition reached it", extra={"barrier": barrier})

    def released(self) -> list[PartitionKey]:
        """Partitions whose barrier is applied (here or by another instance): to resume."""
        done = []
        for where, arrival in list(self.waiting.items()):
            if arrival in self._unrecorded:
                continue
            self._apply_if_complete(arrival)
            if self._is_applied(arrival.barrier):
                del self.waiting[where]
                done.append(where)
        return done

    def forget(self, where: PartitionKey) -> None:
        self.waiting.pop(where, None)
        self._unrecorded = [arrival for arrival in self._unrecorded if arrival.where != where]
