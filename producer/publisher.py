"""Encoding operations into messages and publishing them with an idempotent Kafka producer.

`bson` and `json` send one message per operation. `raw` collects operations per destination partition into
Avro container batches, bounded by events, bytes and a linger time. Every message lands in partition
`murmur2(key) % partitions`, so third parties can recompute it (see schemas/partitioning.py): librdkafka's
`murmur2_random` partitioner places keyed messages, raw batches name the partition their events hash to."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import bson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from oplog import position
from oplog.entry import Operation, is_ddl
from oplog.namespaces import command_target
from runtime.errors import FatalError
from runtime.kafka_topics import TopicDirectory
from schemas import WIRE_VERSION, headers, topics
from schemas.codec import JsonMode, MessageFormat, encode_json, encode_raw_batch, raw_record
from schemas.partitioning import PartitionBy, canonical_json, message_key, partition_for

log = logging.getLogger(__name__)

PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "partitioner": "murmur2_random",
    "linger.ms": 5,
    "compression.type": "none",
    # A reassembled change event (document + pre-image + update) can exceed MongoDB's 16 MB document limit.
    "message.max.bytes": 64 * 1024 * 1024,
}
RAW_RECORD_OVERHEAD_BYTES = 64

Acknowledge = Callable[[], None]


@dataclass(frozen=True)
class Encoding:
    message_format: MessageFormat = MessageFormat.RAW
    json_mode: JsonMode = JsonMode.CANONICAL
    avro_codec: str = "null"
    batch_max_events: int = 500
    batch_max_bytes: int = 1024 * 1024
    batch_linger_s: float = 0.05


class _Batch:
    __slots__ = ("records", "acknowledgements", "size", "started", "namespaces", "ops", "newest", "snapshot")

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.acknowledgements: list[Acknowledge] = []
        self.size = 0
        self.started = time.monotonic()
        self.namespaces: set[str] = set()
        self.ops: set[str] = set()
        self.newest: Any = None
        self.snapshot = True


def _describe(operation: Operation) -> str:
    return f"the {operation.op} event on {operation.ns} for _id {canonical_json(operation.document_id)}"


def _single(values: set[str]) -> str:
    return next(iter(values)) if len(values) == 1 else headers.MIXED


class Publisher:
    def __init__(self, config: dict[str, Any], topic_template: str, task: str, encoding: Encoding,
                 partition_by: PartitionBy, topic_directory: TopicDirectory) -> None:
        self._producer = Producer(config)
        self._template = topic_template
        self._encoding = encoding
        self._partition_by = partition_by
        self._topics = topic_directory
        self._static_headers = [
            (headers.FORMAT, encoding.message_format.value.encode()),
            (headers.WIRE_VERSION, str(WIRE_VERSION).encode()),
            (headers.TASK, task.encode()),
        ]
        self._batches: dict[tuple[str, int], _Batch] = {}
        self._last_headers: tuple[Any, list[tuple[str, bytes]]] = (None, [])
        self.delivery_error: str | None = None
        self._topic_for = lru_cache(maxsize=4096)(self._resolve_topic)

    def topic_for(self, ns: str) -> str:
        return self._topic_for(ns)

    def _resolve_topic(self, ns: str) -> str:
        try:
            return topics.topic_for(self._template, ns)
        except ValueError as exc:
            raise FatalError(str(exc)) from exc

    def publish(self, operation: Operation, on_acknowledged: Acknowledge) -> None:
        if is_ddl(operation.op):
            self._publish_barrier(operation, on_acknowledged)
            return
        topic = self._topic_for(operation.ns)
        key = message_key(self._partition_by, operation.ns, operation.document_id)
        partitions = self._topics.partitions(topic)
        message_format = self._encoding.message_format
        if message_format is MessageFormat.RAW:
            self._add_to_batch(topic, partition_for(key, partitions), operation, on_acknowledged)
            return
        value = operation.value if message_format is MessageFormat.BSON else encode_json(operation.value, self._encoding.json_mode)
        message_headers = self._operation_headers(operation)
        # librdkafka's murmur2_random partitioner computes the same partition as partition_for, in C.
        self._produce(topic, None, key, value, message_headers, [on_acknowledged], lambda: _describe(operation))

    def _publish_barrier(self, operation: Operation, on_acknowledged: Acknowledge) -> None:
        """A DDL event goes to every partition of its topic, after everything already queued there."""
        ns = operation.ns
        command_name = None
        if operation.op == "c":
            command = bson.decode(operation.value)["o"]
            ns = command_target(ns, command)
            command_name = next(iter(command), None)
        topic = self._topic_for(ns if "." in ns else f"{ns}.$cmd")
        barrier = f"{headers.position_text(operation.ts)}:{ns}"
        if operation.snapshot:  # one copy publishes several commands per collection, all at its capture position
            barrier += f":snapshot:{command_name}"
        self._fan_out(operation, [topic], ns, on_acknowledged, barrier, lambda: f"the DDL {barrier}")

    def broadcast(self, operation: Operation, topic_names: list[str], on_acknowledged: Acknowledge) -> None:
        """Send one event to every partition of each topic, after everything already queued there."""
        self._fan_out(operation, topic_names, operation.ns, on_acknowledged, None,
                      lambda: f"the {operation.op} event broadcast at {headers.position_text(operation.ts)}")

    def _fan_out(self, operation: Operation, topic_names: list[str], key: str, on_acknowledged: Acknowledge,
                 barrier: str | None, describe: Callable[[], str]) -> None:
        for queued_topic, partition in [queued for queued in self._batches if queued[0] in topic_names]:
            self._send_batch(queued_topic, partition)
        counts = {topic: self._topics.partitions(topic) for topic in topic_names}
        remaining = [sum(counts.values())]
        if not remaining[0]:
            on_acknowledged()

        def one_copy_acknowledged() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                on_acknowledged()

        message_format = self._encoding.message_format
        if message_format is MessageFormat.RAW:
            value = encode_raw_batch([raw_record(position.to_int64(operation.ts), operation.op, operation.ns, None,
                                                 operation.wall, operation.txn, operation.value)],
                                     self._encoding.avro_codec)
        elif message_format is MessageFormat.JSON:
            value = encode_json(operation.value, self._encoding.json_mode)
        else:
            value = operation.value
        for topic, partitions in counts.items():
            message_headers = self._operation_headers(operation)
            if barrier is not None:
                message_headers = message_headers + [(headers.BARRIER, barrier.encode()),
                                                     (headers.BARRIER_PARTITIONS, str(partitions).encode())]
            for partition in range(partitions):
                self._produce(topic, partition, key.encode(), value, message_headers, [one_copy_acknowledged],
                              describe)

    def _operation_headers(self, operation: Operation) -> list[tuple[str, bytes]]:
        """Headers of one event's message; consecutive events alike (a copy's documents) share one list."""
        identity = (operation.ns, operation.op, operation.ts, operation.snapshot)
        if identity == self._last_headers[0]:
            return self._last_headers[1]
        message_headers = self._static_headers + [
            (headers.NAMESPACE, operation.ns.encode()),
            (headers.OPERATION, operation.op.encode()),
            (headers.SOURCE_TS, headers.position_text(operation.ts).encode()),
        ]
        if operation.snapshot:
            message_headers.append((headers.SNAPSHOT, b"true"))
        self._last_headers = (identity, message_headers)
        return message_headers

    def _add_to_batch(self, topic: str, partition: int, operation: Operation, on_acknowledged: Acknowledge) -> None:
        batch = self._batches.get((topic, partition))
        if batch is None:
            batch = self._batches[(topic, partition)] = _Batch()
        batch.records.append(raw_record(
            position.to_int64(operation.ts), operation.op, operation.ns, canonical_json(operation.document_id),
            operation.wall, operation.txn, operation.value,
        ))
        batch.acknowledgements.append(on_acknowledged)
        batch.size += len(operation.value) + RAW_RECORD_OVERHEAD_BYTES
        batch.namespaces.add(operation.ns)
        batch.ops.add(operation.op)
        batch.newest = operation.ts
        batch.snapshot = batch.snapshot and operation.snapshot
        encoding = self._encoding
        if len(batch.records) >= encoding.batch_max_events or batch.size >= encoding.batch_max_bytes:
            self._send_batch(topic, partition)

    def _send_batch(self, topic: str, partition: int) -> None:
        batch = self._batches.pop((topic, partition))
        message_headers = self._static_headers + [
            (headers.NAMESPACE, _single(batch.namespaces).encode()),
            (headers.OPERATION, _single(batch.ops).encode()),
            (headers.SOURCE_TS, headers.position_text(batch.newest).encode()),
            (headers.COUNT, str(len(batch.records)).encode()),
        ]
        if batch.snapshot:
            message_headers.append((headers.SNAPSHOT, b"true"))
        value = encode_raw_batch(batch.records, self._encoding.avro_codec)
        first = batch.records[0]
        self._produce(topic, partition, None, value, message_headers, batch.acknowledgements,
                      lambda: f"a raw batch of {len(batch.records)} events starting with {first['ns']} "
                              f"_id {first['document_id']}")

    def send_due_batches(self) -> None:
        """Send raw batches that have waited their linger time. Batches sit in the dict in the order they were
        opened, so the first one is the oldest and most calls return after looking at it alone."""
        deadline = time.monotonic() - self._encoding.batch_linger_s
        while self._batches:
            (topic, partition), oldest = next(iter(self._batches.items()))
            if oldest.started > deadline:
                return
            self._send_batch(topic, partition)

    def _produce(self, topic: str, partition: int | None, key: bytes | None, value: bytes,
                 message_headers: list[tuple[str, bytes]], acknowledgements: list[Acknowledge],
                 describe: Callable[[], str]) -> None:
        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is None:
                for acknowledge in acknowledgements:
                    acknowledge()
            elif self.delivery_error is None:
                self.delivery_error = f"{error} for {describe()} ({len(value)} bytes) on topic {topic}"
                if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    self.delivery_error += ": raise the topic's max.message.bytes (and the brokers' message.max.bytes)"

        explicit = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=message_headers, on_delivery=delivered,
                                       **explicit)
                return
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    raise FatalError(
                        f"{describe()} makes a message of {len(value)} bytes, over message.max.bytes; raise it with "
                        "-X message.max.bytes=N (and the topic's max.message.bytes)"
                    ) from exc
                raise

    def poll(self, timeout: float = 0.0) -> None:
        self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        """Send open batches and wait for outstanding acknowledgements; returns how many are still outstanding."""
        for topic, partition in list(self._batches):
            self._send_batch(topic, partition)
        return self._producer.flush(timeout)
