"""The DDL barrier: a DDL event applies after every earlier event of its collection in every partition, and
before every later one, also when the partitions are spread over several consumer instances.

The producer sends each DDL to every partition of its topic. A partition that reaches it applies everything
before it, records its arrival in the destination (`kafkashake.ddl_barrier`), and waits. The arrival that
completes the set claims the DDL and applies it once; then every partition moves past it. A claim left by a
crashed instance can be taken over after `takeover_s` (DDL replays are harmless)."""
from __future__ import annotations

import datetime as _dt
import socket
import uuid
from typing import Any

from pymongo import ReturnDocument
from pymongo.collection import Collection

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
