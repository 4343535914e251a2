"""The producer's checkpoint: the oplog position below which everything is acknowledged by Kafka.

Stored as one document per task (`_id` = task name) in a MongoDB collection, by default
`kafkashake.checkpoint` on the source."""
from __future__ import annotations

import datetime as _dt

from bson.timestamp import Timestamp
from pymongo.collection import Collection

from runtime.version import VERSION


class CheckpointStore:
    def __init__(self, collection: Collection, task: str, fetch_method: str) -> None:
        self._collection = collection
        self._task = task
        self._fetch_method = fetch_method
        self._last_saved: Timestamp | None = None

    def load(self) -> Timestamp | None:
        document = self._collection.find_one({"_id": self._task})
        if document is None:
            return None
        self._last_saved = document["ts"]
        return document["ts"]

    def save(self, ts: Timestamp) -> bool:
        """Persist `ts` if it moved. Returns whether a write happened."""
        if ts == self._last_saved:
            return False
        self._collection.update_one(
            {"_id": self._task},
            {
                "$set": {
                    "ts": ts,
                    "fetch_method": self._fetch_method,
                    "version": VERSION,
                    "updated_at": _dt.datetime.now(tz=_dt.timezone.utc),
                }
            },
            upsert=True,
        )
        self._last_saved = ts
        return True
