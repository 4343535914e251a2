"""The consumer's checkpoint in the destination: per partition, the last applied offset and source `ts`.

Written after each applied batch and before the Kafka offset commit, so a crash in between loses nothing:
on assignment the consumer resumes from whichever of the two is further."""
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


class ConsumerCheckpointStore:
    def __init__(self, collection: Collection, group: str) -> None:
        self._collection = collection
        self._group = group

    def _key(self, topic: str, partition: int) -> str:
        return f"{self._group}/{topic}/{partition}"

    def load(self, topic: str, partition: int) -> PartitionPosition | None:
        document = self._collection.find_one({"_id": self._key(topic, partition)})
        if document is None:
            return None
        return PartitionPosition(topic, partition, int(document["offset"]), document.get("ts"),
                                 document.get("snapshot_until"))

    def save(self, positions: list[PartitionPosition]) -> None:
        if not positions:
            return
        now = _dt.datetime.now(tz=_dt.timezone.utc)
        self._collection.bulk_write(
            [
                UpdateOne(
                    {"_id": self._key(p.topic, p.partition)},
                    {
                        "$set": {
                            "group": self._group,
                            "topic": p.topic,
                            "partition": p.partition,
                            "offset": p.offset,
                            "ts": p.ts,
                            "snapshot_until": p.snapshot_until,
                            "updated_at": now,
                        }
                    },
                    upsert=True,
                )
                for p in positions
            ],
            ordered=False,
        )
