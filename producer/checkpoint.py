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
from pymongo.errors import DuplicateKeyError

from kafkashake.runtime.errors import FatalError
from kafkashake.runtime.version import VERSION
from kafkashake.schemas import WIRE_VERSION


class FencedError(FatalError):
    """A newer leader (higher --ha epoch) wrote the checkpoint: this instance must not move it any more."""


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
        # The wire version of the producer that saved the loaded checkpoint (1 when it did not say).
        self.loaded_wire_version: int | None = None
        # --ha: the lease epoch this instance writes with; writes fail once a higher epoch has written.
        self.epoch: int | None = None

    def load(self) -> Checkpoint | None:
        document = self._collection.find_one({"_id": self._task})
        if document is None:
            return None
        self._last_saved = Checkpoint(document["ts"], document.get("resume_token"),
                                      document.get("fetch_method", "oplog"), document.get("scope", ""))
        self.loaded_wire_version = int(document.get("wire_version", 1))
        return self._last_saved

    def _fenced(self) -> dict[str, Any]:
        match: dict[str, Any] = {"_id": self._task}
        if self.epoch is not None:
            match["$or"] = [{"epoch": {"$lte": self.epoch}}, {"epoch": {"$exists": False}}]
        return match

    def claim(self, epoch: int) -> None:
        """--ha: write with `epoch` from now on, and mark the checkpoint so no lower epoch can write it again."""
        self.epoch = epoch
        claimed = self._collection.update_one(self._fenced(), {"$set": {"epoch": epoch}})
        if claimed.matched_count == 0 and self._collection.find_one({"_id": self._task}) is not None:
            raise self._fenced_error()

    def _fenced_error(self) -> FencedError:
        return FencedError(f"the checkpoint was written by a newer leader (epoch above {self.epoch}): this instance "
                           "lost the --ha lease and stops without moving it")

    def save(self, checkpoint: Checkpoint, force: bool = False) -> bool:
        """Persist `checkpoint` if it moved (or `force`). Returns whether a write happened."""
        if checkpoint == self._last_saved and not force:
            return False
        fields = {
            "ts": checkpoint.ts,
            "resume_token": checkpoint.resume_token,
            "fetch_method": checkpoint.fetch_method,
            "scope": checkpoint.scope,
            "version": VERSION,
            "wire_version": WIRE_VERSION,
            "updated_at": _dt.datetime.now(tz=_dt.timezone.utc),
        }
        if self.epoch is not None:
            fields["epoch"] = self.epoch
        try:
            self._collection.update_one(self._fenced(), {"$set": fields}, upsert=True)
        except DuplicateKeyError as exc:
            raise self._fenced_error() from exc
        self._last_saved = checkpoint
        return True
