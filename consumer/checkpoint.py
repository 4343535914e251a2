"""The consumer's checkpoint in the destination: per partition, the last applied offset and source `ts`, the
producer's watermark reached, and the id of the topic the offsets belong to.

Written after each applied batch and before the Kafka offset commit, so a crash in between loses nothing:
on assignment the consumer resumes from whichever of the two is further, if both were saved for the topic it
now reads (a topic deleted and re-created under the same name starts over). Other instances of the group read each
other's watermarks here. Before each write, a write-ahead mark records how far it may apply each partition."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from bson.timestamp import Timestamp
from pymongo import UpdateOne
from pymongo.collection import Collection


@dataclass(frozen=True)
class PartitionPosition:
    topic: str
    partition: int
    offset: int
    ts: Timestamp | None
    # Set once the partition passed a snapshot's completion event: changes up to it overlap the copy.
    snapshot_until: Timestamp | None = None
    # Every change of this partition at or before it is applied (the producer's watermark, from the last message).
    watermark: Timestamp | None = None
    # The producer was in sync with the source at this time, and everything before it in this partition is applied.
    in_sync_as_of: _dt.datetime | None = None
    topic_id: str | None = None
    # The newest event (offset, index in its message) applied, which can lie beyond `offset` when a message was
    # applied in part: a restart reads those events again and applies them convergently.
    applied_through: tuple[int, int] | None = None
    # Every event at or before it (offset, index) is applied: a restart skips them instead of applying them again.
    done_through: tuple[int, int] | None = None
    # Saved before a write starts (`WriteAhead`): every event up to it may be applied, though the checkpoint may not
    # say so yet.
    writing_through: tuple[int, int] | None = None


@dataclass(frozen=True)
class WriteAhead:
    """How far a partition's events may be applied once the write about to start has run. A checkpoint that does
    not exist yet is created at `resume_offset`, the last message before this consumer's first of the partition."""

    topic: str
    partition: int
    through: tuple[int, int]
    resume_offset: int
    topic_id: str | None


class ConsumerCheckpointStore:
    def __init__(self, collection: Collection, group: str) -> None:
        self._collection = collection
        self._group = group

    def _key(self, topic: str, partition: int) -> str:
        return f"{self._group}/{topic}/{partition}"

    @staticmethod
    def _position(document: dict) -> PartitionPosition:
        applied, done = (_event_position(document.get(name)) for name in ("applied_through", "done_through"))
        # A mark saved for an earlier topic of the same name (deleted and re-created) says nothing about this one.
        mark = document.get("writing_through") or {}
        writing = _event_position(mark.get("through")) if mark.get("topic_id") == document.get("topic_id") else None
        return PartitionPosition(document["topic"], int(document["partition"]), int(document["offset"]),
                                 document.get("ts"), document.get("snapshot_until"), document.get("watermark"),
                                 document.get("in_sync_as_of"), document.get("topic_id"), applied, done, writing)

    def load(self, topic: str, partition: int) -> PartitionPosition | None:
        document = self._collection.find_one({"_id": self._key(topic, partition)})
        return None if document is None else self._position({"topic": topic, "partition": partition, **document})

    def load_topic(self, topic: str) -> dict[int, PartitionPosition]:
        """Every partition of `topic` this group has a checkpoint for, whichever instance wrote it."""
        return {int(document["partition"]): self._position(document)
                for document in self._collection.find({"group": self._group, "topic": topic})}

    def save(self, positions: list[PartitionPosition]) -> None:
        if not positions:
            return
        now = _dt.datetime.now(tz=_dt.timezone.utc)
        self._collection.bulk_write(
            [
                UpdateOne(
                    {"_id": self._key(p.topic, p.partition)},
                    {"$set": {"group": self._group, "topic": p.topic, "partition": p.partition, "offset": p.offset,
                              "ts": p.ts, "snapshot_until": p.snapshot_until, "watermark": p.watermark,
                              "in_sync_as_of": p.in_sync_as_of, "topic_id": p.topic_id,
                              "applied_through": list(p.applied_through) if p.applied_through else None,
                              "done_through": list(p.done_through) if p.done_through else None,
                              "updated_at": now}},
                    upsert=True,
                )
                for p in positions
            ],
            ordered=False,
        )

    def mark_writing(self, marks: list[WriteAhead]) -> None:
        """Saved before the write starts: read again after a crash, those events are applied convergently instead
        of as new changes (an insert over the document it wrote, an update of a document a later change deleted)."""
        if not marks:
            return
        now = _dt.datetime.now(tz=_dt.timezone.utc)  # the consumer is running (kafkashake verify --live)
        self._collection.bulk_write(
            [
                UpdateOne(
                    {"_id": self._key(m.topic, m.partition)},
                    {"$set": {"writing_through": {"through": list(m.through), "topic_id": m.topic_id},
                              "updated_at": now},
                     "$setOnInsert": {"group": self._group, "topic": m.topic, "partition": m.partition,
                                      "offset": m.resume_offset, "topic_id": m.topic_id}},
                    upsert=True,
                )
                for m in marks
            ],
            ordered=False,
        )

    def forget(self, topic: str, partition: int) -> None:
        self._collection.delete_one({"_id": self._key(topic, partition)})


def _event_position(saved: list | None) -> tuple[int, int] | None:  # type: ignore[type-arg]
    return (int(saved[0]), int(saved[1])) if saved else None
