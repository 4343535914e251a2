"""The producer's checkpoint: the position below which everything is acknowledged by Kafka.

Stored as one document per task (`_id` = task name) in a MongoDB collection, by default
`kafkashake.checkpoint` on the source: `ts` (oplog position or change-event cluster time), `resume_token`
(change streams), the watch scope a token belongs to, fetch method, version and update time."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

from bson.timestamp import Timestamp
from pymongo.collection import Collection

from runtime.version import VERSION


@dataclass(frozen=True)
class Checkpoint:
    ts: Timestamp
    resume_token: Any = None
    fetch_method: str = "oplog"
    scope: str = ""


class CheckpointStore:
    def __init__(self, collection: Collection, task: str, fetch_method: str) -> None:
        self._collection = collection
        self._task = task
        self._fetch_method = fetch_method
        self._last_saved: Checkpoint | None = None

    def load(self) -> Checkpoint | None:
        document = self._collection.find_one({"_id": self._task})
        if document is None:
            return None
        self._last_saved = Checkpoint(document["ts"], document.get("resume_token"),
                                      document.get("fetch_method", "oplog"), document.get("scope", ""))
        return self._last_saved

    def save(self, checkpoint: Checkpoint) -> bool:
        """Persist `checkpoint` if it moved. Returns whether a write happened."""
        if checkpoint == self._last_saved:
            return False
        self._collection.update_one(
            {"_id": self._task},
            {
                "$set": {
                    "ts": checkpoint.ts,
                    "resume_token": checkpoint.resume_token,
                    "fetch_method": checkpoint.fetch_method,
                    "scope": checkpoint.scope,
                    "version": VERSION,
                    "updated_at": _dt.datetime.now(tz=_dt.timezone.utc),
                }
            },
            upsert=True,
        )
        self._last_saved = checkpoint
        return True
