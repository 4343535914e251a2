"""Kafka headers carried by every message. Values are UTF-8 strings so any client can read them.

For a raw batch, `ns` and `op` hold the single value shared by every event in it, or `*` when they differ;
`ts` is the newest event's position and `count` the number of events."""
from __future__ import annotations

from bson.timestamp import Timestamp

FORMAT = "kafkashake.format"
WIRE_VERSION = "kafkashake.version"
NAMESPACE = "kafkashake.ns"
OPERATION = "kafkashake.op"
SOURCE_TS = "kafkashake.ts"
TASK = "kafkashake.task"
COUNT = "kafkashake.count"
# DDL barrier: a DDL event is sent to every partition of its topic; each copy names the barrier and how many
# partitions carry it, so consumers apply it once, after every earlier event of every partition.
BARRIER = "kafkashake.barrier"
BARRIER_PARTITIONS = "kafkashake.barrier.partitions"
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
MIXED = "*"


def position_text(ts: Timestamp) -> str:
    return f"{ts.time},{ts.inc}"


def as_dict(headers: list[tuple[str, bytes | None]] | None) -> dict[str, str]:
    if not headers:
        return {}
    return {name: (value or b"").decode("utf-8", "replace") for name, value in headers}
