"""What an initial copy has to do and how far it got, persisted next to the producer's checkpoint.

One document per task in `<checkpoint db>.snapshot`: the capture position (where streaming resumes once the
copy is done), when the copy started, and per collection its options, indexes, estimated size and `_id` ranges.
A range records the last `_id` whose document, and every one before it in the range, Kafka acknowledged; a
restart reads on from there."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.timestamp import Timestamp
from pymongo.collection import Collection

COPYING = "copying"
COMPLETE = "complete"


@dataclass
class RangeState:
    lower: Any = field(default_factory=MinKey)
    upper: Any = field(default_factory=MaxKey)
    # `[_id]` of the last acknowledged document (a list because None is itself a valid `_id`).
    resume_after: list[Any] | None = None
    copied: int = 0
    done: bool = False

    def to_document(self) -> dict[str, Any]:
        return {"lower": self.lower, "upper": self.upper, "resume_after": self.resume_after, "copied": self.copied,
                "done": self.done}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> "RangeState":
        return cls(document["lower"], document["upper"], document.get("resume_after"), document.get("copied", 0),
                   document.get("done", False))


@dataclass
class CollectionState:
    ns: str
    kind: str = "collection"
    options: dict[str, Any] = field(default_factory=dict)
    indexes: list[dict[str, Any]] = field(default_factory=list)
    estimated: int = 0
    ranges: list[RangeState] = field(default_factory=list)
    announced: bool = False
    indexes_published: bool = False

    @property
    def db(self) -> str:
        return self.ns.partition(".")[0]

    @property
    def name(self) -> str:
        return self.ns.partition(".")[2]

    @property
    def copied(self) -> int:
        return sum(r.copied for r in self.ranges)

    @property
    def documents_done(self) -> bool:
        return all(r.done for r in self.ranges)

    def to_document(self) -> dict[str, Any]:
        return {"ns": self.ns, "kind": self.kind, "options": self.options, "indexes": self.indexes,
                "estimated": self.estimated, "ranges": [r.to_document() for r in self.ranges],
                "announced": self.announced, "indexes_published": self.indexes_published}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> "CollectionState":
        return cls(document["ns"], document.get("kind", "collection"), dict(document.get("options") or {}),
                   [dict(index) for index in document.get("indexes") or []], document.get("estimated", 0),
                   [RangeState.from_document(r) for r in document.get("ranges") or []],
                   document.get("announced", False), document.get("indexes_published", False))


@dataclass
class SnapshotState:
    capture: Timestamp
    started_at: _dt.datetime
    collections: list[CollectionState]
    status: str = COPYING
    index_creation: str = "before"

    @property
    def copied(self) -> int:
        return sum(c.copied for c in self.collections)

    @property
    def estimated(self) -> int:
        return sum(c.estimated for c in self.collections)

    def to_document(self) -> dict[str, Any]:
        return {"capture": self.capture, "started_at": self.started_at, "status": self.status,
                "index_creation": self.index_creation,
                "collections": [c.to_document() for c in self.collections]}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> "SnapshotState":
        started = document["started_at"]
        if started.tzinfo is None:
            started = started.replace(tzinfo=_dt.timezone.utc)
        return cls(document["capture"], started,
                   [CollectionState.from_document(c) for c in document.get("collections") or []],
                   document.get("status", COPYING), document.get("index_creation", "before"))


class SnapshotStore:
    def __init__(self, collection: Collection, task: str) -> None:
        self._collection = collection
        self._task = task

    def load(self) -> SnapshotState | None:
        document = self._collection.find_one({"_id": self._task})
        return None if document is None else SnapshotState.from_document(document)

    def save(self, state: SnapshotState) -> None:
        self._collection.replace_one({"_id": self._task}, {"_id": self._task, **state.to_document(),
                                                           "updated_at": _dt.datetime.now(tz=_dt.timezone.utc)},
                                     upsert=True)
