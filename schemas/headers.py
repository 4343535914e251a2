"""Kafka headers carried by every message. Values are UTF-8 strings so any client can read them.

For a raw batch, `ns` and `op` hold the single value shared by every event in it, or `*` when they differ;
`ts` is the newest event's position and `count` the number of events."""
from __future__ import annotations

from bson.timestamp import Timestamp

from kafkashake.oplog import position

FORMAT = "kafkashake.format"
WIRE_VERSION = "kafkashake.version"
NAMESPACE = "kafkashake.ns"
OPERATION = "kafkashake.op"
SOURCE_TS = "kafkashake.ts"
TASK = "kafkashake.task"
COUNT = "kafkashake.count"
# json only: how the event is rendered, `canonical`, `relaxed` or `bson` (schemas/codec.py, JsonRendering). Every
# rendering gives back the event's exact BSON.
JSON_RENDERING = "kafkashake.json"
# DDL barrier: a DDL event is sent to every partition of its topic; each copy names the barrier and how many
# partitions carry it, so consumers apply it once, after every earlier event of every partition.
BARRIER = "kafkashake.barrier"
BARRIER_PARTITIONS = "kafkashake.barrier.partitions"
# `topic:partitions,...`: every topic that carries copies of the barrier (a rename spans its source's and its
# target's topics, a dropDatabase every topic of the database). A consumer that follows only some of them waits
# for the copies in those.
BARRIER_TOPICS = "kafkashake.barrier.topics"
# Everything the producer read at or before this position (`seconds,increment`) was acknowledged by Kafka before
# this message was handed over: in this partition it all lies at lower offsets. On data messages and heartbeats.
WATERMARK = "kafkashake.watermark"
# "true" on heartbeats: a message with no change, sent to a partition that had no message for a while, so that
# consumers learn the watermark and that the producer is alive (see schemas/heartbeats.py).
HEARTBEAT = "kafkashake.heartbeat"
# Set to "true" on messages of the initial copy (--sync-mode all|full); see schemas/snapshot.py.
SNAPSHOT = "kafkashake.snapshot"
# Dead letters (the consumer's --dead-letter-topic) keep the original key, value and headers, and add these.
DLQ_REASON = "kafkashake.dlq.reason"
DLQ_ERROR = "kafkashake.dlq.error"
DLQ_TOPIC = "kafkashake.dlq.topic"
DLQ_PARTITION = "kafkashake.dlq.partition"
DLQ_OFFSET = "kafkashake.dlq.offset"
DLQ_TIME = "kafkashake.dlq.time"
DLQ_GROUP = "kafkashake.dlq.group"
# Set when a dead letter is one event of a raw batch: its position in the batch.
DLQ_EVENT_INDEX = "kafkashake.dlq.event_index"
MIXED = "*"


def position_text(ts: Timestamp) -> str:
    """`seconds,increment`, as every header holding a position writes it."""
    return position.text(ts)


def parse_position(text: str) -> Timestamp | None:
    """`seconds,increment` back into a Timestamp; None if the text is not one."""
    seconds, _, increment = text.partition(",")
    try:
        return Timestamp(int(seconds), int(increment))
    except (TypeError, ValueError, OverflowError):
        return None


def as_dict(headers: list[tuple[str, bytes | None]] | None) -> dict[str, str]:
    if not headers:
        return {}
    return {name: (value or b"").decode("utf-8", "replace") for name, value in headers}
