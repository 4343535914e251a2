"""Encoding operations into messages and publishing them with an idempotent Kafka producer.

`bson` and `json` send one message per operation. `raw` collects operations per destination partition into Avro
container batches (producer/raw_batches.py). Every message lands in partition `murmur2(key) % partitions`, set
explicitly, so third parties can recompute it (schemas/partitioning.py). A value larger than its topic accepts
travels as fragments (schemas/fragments.py), or stops the producer with `--large-message fail`. Every message
carries the producer's watermark: everything at or before it was acknowledged by Kafka before this message was
handed over."""
from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Protocol

import bson
from bson.timestamp import Timestamp
from confluent_kafka import KafkaError, KafkaException, Message

from kafkashake.oplog.entry import Operation, is_ddl
from kafkashake.oplog.namespaces import affected_namespaces, command_target
from kafkashake.producer.raw_batches import RawBatch, RawBatches
from kafkashake.producer.settings import Encoding, LargeMessages
from kafkashake.runtime.errors import FatalError
from kafkashake.runtime.kafka_topics import TopicDirectory
from kafkashake.schemas import WIRE_VERSION, fragments, headers, topics
from kafkashake.schemas.heartbeats import Heartbeat, heartbeat_event
from kafkashake.schemas.codec import JsonRendering, MessageFormat, encode_json, encode_raw_batch, raw_record
from kafkashake.schemas.partitioning import PartitionBy, canonical_json, message_key, partition_for

log = logging.getLogger(__name__)

PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "partitioner": "murmur2_random",
    # Batches of 20 ms: a broker spends far less per message on fewer, larger batches (Apache Kafka on 2 cores took
    # 0.8 of a core for 10k messages/s at 5 ms, and the producer ran 20 % faster at 20 ms); latency stays well under 1 s.
    "linger.ms": 20,
    "compression.type": "none",
    # Only the client's own ceiling: each message is sized to its topic's max.message.bytes, read from the brokers.
    "message.max.bytes": 64 * 1024 * 1024,
}
# A record batch's header, one record's framing and the largest header set, besides key and value.
RECORD_OVERHEAD_BYTES = 61 + 40
HEADER_OVERHEAD_BYTES = 10
SAFETY_MARGIN_BYTES = 256

Acknowledge = Callable[[], None]


class KafkaProducer(Protocol):
    def produce(self, topic: str, value: bytes | None = ..., key: bytes | None = ..., partition: int = ...,
                on_delivery: Any = ..., headers: Any = ...) -> None: ...
    def poll(self, timeout: float = ...) -> int: ...
    def flush(self, timeout: float = ...) -> int: ...


def describe_operation(operation: Operation) -> str:
    return f"the {operation.op} event on {operation.ns} for _id {canonical_json(operation.document_id)}"


def barrier_namespaces(operation: Operation) -> tuple[str, list[str], str | None]:
    """A DDL event's namespace (`db.coll`, or `db`), every namespace it changes, and its command name."""
    if operation.op == "c":
        command = bson.decode(operation.value)["o"]
        return command_target(operation.ns, command), affected_namespaces(operation.ns, command), next(iter(command))
    if operation.op == "rename":
        event = bson.decode(operation.value)
        to = event.get("to") or (event.get("operationDescription") or {}).get("to")
        if isinstance(to, dict) and to.get("coll"):
            return operation.ns, [operation.ns, f"{to.get('db')}.{to['coll']}"], operation.op
    return operation.ns, [operation.ns], operation.op


def _single(values: set[str]) -> str:
    return next(iter(values)) if len(values) == 1 else headers.MIXED


def header_bytes(message_headers: list[tuple[str, bytes]]) -> int:
    return sum(len(name) + len(value) + HEADER_OVERHEAD_BYTES for name, value in message_headers)


def _sized(message_headers: list[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], int]:
    return message_headers, header_bytes(message_headers)


SNAPSHOT_HEADER = _sized([(headers.SNAPSHOT, b"true")])


def overhead(key: bytes | None, message_headers: list[tuple[str, bytes]]) -> int:
    """Bytes a record adds to its value inside a record batch."""
    return RECORD_OVERHEAD_BYTES + SAFETY_MARGIN_BYTES + len(key or b"") + header_bytes(message_headers)


class Publisher:
    def __init__(self, producer: KafkaProducer, topic_directory: TopicDirectory, topic_template: str, task: str,
                 encoding: Encoding, partition_by: PartitionBy) -> None:
        self._producer = producer
        self._template = topic_template
        self._encoding = encoding
        self._partition_by = partition_by
        self._topics = topic_directory
        self._static_headers = [
            (headers.FORMAT, encoding.message_format.value.encode()),
            (headers.WIRE_VERSION, str(WIRE_VERSION).encode()),
            (headers.TASK, task.encode()),
        ]
        self._raw_overhead = overhead(None, self._raw_headers_bound())
        self._rendering_headers = {rendering: _sized([(headers.JSON_RENDERING, rendering.value.encode())])
                                   for rendering in JsonRendering}
        self._batches = RawBatches(encoding.batch_max_events, encoding.batch_max_bytes, encoding.batch_linger_s)
        self._header_prefixes: dict[tuple[str, str], tuple[list[tuple[str, bytes]], int]] = {}
        # The last event's position, watermark, (ns, op, snapshot), headers and their size.
        self._last_headers: tuple[Any, Any, Any, list[tuple[str, bytes]], int] = (None, None, None, [], 0)
        self._watermark: list[tuple[str, bytes]] = []
        self._watermark_bytes = 0
        self.delivery_error: str | None = None
        # An error librdkafka raised instead of reporting it for one message (a fatal one, such as being refused
        # a producer id).
        self.refused: KafkaError | None = None
        self.delivered = 0
        self.last_sent: dict[tuple[str, int], float] = {}
        self._topic_for = lru_cache(maxsize=4096)(self._resolve_topic)

    # ------------------------------------------------------------------------------------------ routing

    def topic_for(self, ns: str) -> str:
        return self._topic_for(ns)

    def _resolve_topic(self, ns: str) -> str:
        try:
            return topics.topic_for(self._template, ns)
        except ValueError as exc:
            raise FatalError(str(exc)) from exc

    def known_topics(self) -> list[str]:
        """Topics this publisher has sent to so far."""
        return sorted({topic for topic, _ in self.last_sent})

    def set_watermark(self, ts: Timestamp | None) -> None:
        """Everything at or before `ts` is acknowledged by Kafka: messages handed over from now on say so."""
        self._watermark = [] if ts is None else [(headers.WATERMARK, headers.position_text(ts).encode())]
        self._watermark_bytes = header_bytes(self._watermark)

    # ------------------------------------------------------------------------------------------ events

    def publish(self, operation: Operation, on_acknowledged: Acknowledge) -> None:
        if is_ddl(operation.op):
            self._publish_barrier(operation, on_acknowledged)
            return
        topic = self._topic_for(operation.ns)
        key = message_key(self._partition_by, operation.ns, operation.document_id)
        limits = self._topics.limits(topic)
        partition = partition_for(key, limits.partitions)
        message_format = self._encoding.message_format
        if message_format is MessageFormat.RAW:
            for closed in self._batches.add(topic, partition, operation, on_acknowledged,
                                            limits.max_message_bytes - self._raw_overhead):
                self._send_batch(*closed)
            return
        value, message_headers, size_of_headers = self._single_event_message(operation)
        self._produce(topic, partition, key, value, message_headers, [on_acknowledged],
                      lambda: describe_operation(operation), size_of_headers)

    def _publish_barrier(self, operation: Operation, on_acknowledged: Acknowledge) -> None:
        """A DDL event goes to every partition of every topic it affects, after everything queued there."""
        ns, affected, command_name = barrier_namespaces(operation)
        barrier = f"{headers.position_text(operation.ts)}:{ns}"
        if operation.snapshot:  # one copy publishes several commands per collection, all at its capture position
            barrier += f":snapshot:{command_name}"
        self._fan_out(operation, self._barrier_topics(affected), ns, on_acknowledged, barrier,
                      lambda: f"the DDL {barrier}")

    def _barrier_topics(self, namespaces: list[str]) -> list[str]:
        """Topics whose order a DDL event must keep: its namespace's, a rename's target's, and for a database-wide
        command every topic of that database (those the brokers have, and those written so far)."""
        names = {self._topic_for(target if "." in target else f"{target}.$cmd") for target in namespaces}
        database_wide = [target for target in namespaces if "." not in target]
        if database_wide and topics.is_template(self._template):
            candidates = set(self._topics.existing()) | set(self.known_topics())
            for db in database_wide:
                names |= {name for name in candidates if topics.belongs_to_database(self._template, name, db)}
        return sorted(names)

    def barrier(self, operation: Operation, topic_names: list[str], barrier: str, on_acknowledged: Acknowledge) -> None:
        """A synchronisation point in every partition of the topics: consumers apply everything before it first."""
        self._fan_out(operation, topic_names, operation.ns, on_acknowledged, barrier, lambda: f"the barrier {barrier}")

    def broadcast(self, operation: Operation, topic_names: list[str], on_acknowledged: Acknowledge,
                  extra_headers: list[tuple[str, bytes]] | None = None) -> None:
        """Send one event to every partition of each topic, after everything already queued there."""
        self._fan_out(operation, topic_names, operation.ns, on_acknowledged, None,
                      lambda: f"the {operation.op} event broadcast at {headers.position_text(operation.ts)}",
                      extra_headers or [])

    def _fan_out(self, operation: Operation, topic_names: list[str], key: str, on_acknowledged: Acknowledge,
                 barrier: str | None, describe: Callable[[], str],
                 extra_headers: list[tuple[str, bytes]] | None = None) -> None:
        for closed in self._batches.drain(set(topic_names)):
            self._send_batch(*closed)
        counts = {topic: self._topics.partitions(topic) for topic in topic_names}
        remaining = [sum(counts.values())]
        if not remaining[0]:
            on_acknowledged()

        def one_copy_acknowledged() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                on_acknowledged()

        value, message_headers, _ = self._single_event_message(operation)
        message_headers = message_headers + (extra_headers or [])
        if barrier is not None:
            spread = ",".join(f"{topic}:{partitions}" for topic, partitions in counts.items())
            message_headers = message_headers + [(headers.BARRIER, barrier.encode()),
                                                 (headers.BARRIER_PARTITIONS, str(sum(counts.values())).encode()),
                                                 (headers.BARRIER_TOPICS, spread.encode())]
        for topic, partitions in counts.items():
            for partition in range(partitions):
                self._produce(topic, partition, key.encode(), value, message_headers, [one_copy_acknowledged],
                              describe)

    def _single_event_message(self, operation: Operation) -> tuple[bytes, list[tuple[str, bytes]], int]:
        """The value and headers of a message holding this one event, and the headers' size."""
        message_format = self._encoding.message_format
        message_headers, size_of_headers = self._operation_headers(operation)
        if message_format is MessageFormat.RAW:
            document_id = None if operation.document_id is None else canonical_json(operation.document_id)
            return encode_raw_batch([raw_record(operation.ts, operation.op, operation.ns, document_id, operation.wall,
                                                operation.txn, operation.value)],
                                    self._encoding.avro_codec), message_headers, size_of_headers
        if message_format is MessageFormat.JSON:
            value, rendering = encode_json(operation.value, self._encoding.json_mode)
            rendering_header, rendering_size = self._rendering_headers[rendering]
            return value, message_headers + rendering_header, size_of_headers + rendering_size
        return operation.value, message_headers, size_of_headers

    def _operation_headers(self, operation: Operation) -> tuple[list[tuple[str, bytes]], int]:
        """Headers of one event's message and their size; consecutive events alike (a copy's documents) share one
        list."""
        alike = (operation.ns, operation.op, operation.snapshot)
        last_ts, last_watermark, last_alike, last_headers, last_size = self._last_headers
        if operation.ts is last_ts and self._watermark is last_watermark and alike == last_alike:
            return last_headers, last_size
        prefix = self._header_prefixes.get((operation.ns, operation.op))
        if prefix is None:
            names = self._static_headers + [(headers.NAMESPACE, operation.ns.encode()),
                                            (headers.OPERATION, operation.op.encode())]
            prefix = self._header_prefixes[(operation.ns, operation.op)] = _sized(names)
        source_ts = (headers.SOURCE_TS, headers.position_text(operation.ts).encode())
        message_headers = [*prefix[0], source_ts, *self._watermark]
        size = prefix[1] + len(source_ts[0]) + len(source_ts[1]) + HEADER_OVERHEAD_BYTES + self._watermark_bytes
        if operation.snapshot:
            message_headers += SNAPSHOT_HEADER[0]
            size += SNAPSHOT_HEADER[1]
        self._last_headers = (operation.ts, self._watermark, alike, message_headers, size)
        return message_headers, size

    def heartbeat(self, topic_names: list[str], heartbeat: Heartbeat, quiet_for_s: float) -> int:
        """Send a heartbeat to every partition of `topic_names` that has had no message for `quiet_for_s`;
        returns how many were sent."""
        now = time.monotonic()
        wall = _dt.datetime.now(tz=_dt.timezone.utc)
        operation = Operation(heartbeat.watermark, "n", "", None, heartbeat_event(heartbeat, wall), wall)
        value: bytes | None = None
        sent = 0
        for topic in topic_names:
            for partition in range(self._topics.partitions(topic)):
                if now - self.last_sent.get((topic, partition), 0.0) < quiet_for_s:
                    continue
                if value is None:
                    value, message_headers, _ = self._single_event_message(operation)
                    message_headers = message_headers + [(headers.HEARTBEAT, b"true")]
                self._produce(topic, partition, None, value, message_headers, [], lambda: "a heartbeat")
                sent += 1
        return sent

    # ------------------------------------------------------------------------------------------ raw batches

    def _raw_headers_bound(self) -> list[tuple[str, bytes]]:
        """The largest header set a raw batch message can have, for sizing batches."""
        return self._static_headers + [(headers.NAMESPACE, b"x" * 256), (headers.OPERATION, b"x" * 16),
                                       (headers.SOURCE_TS, b"x" * 24), (headers.COUNT, b"x" * 8),
                                       (headers.WATERMARK, b"x" * 24), (headers.SNAPSHOT, b"true")]

    def _send_batch(self, topic: str, partition: int, batch: RawBatch) -> None:
        message_headers = self._static_headers + [
            (headers.NAMESPACE, _single(batch.namespaces).encode()),
            (headers.OPERATION, _single(batch.ops).encode()),
            (headers.SOURCE_TS, headers.position_text(batch.newest).encode()),
            (headers.COUNT, str(len(batch.records)).encode()),
            *self._watermark,
        ]
        if batch.snapshot:
            message_headers += SNAPSHOT_HEADER[0]
        value = encode_raw_batch(batch.records, self._encoding.avro_codec)
        self._produce(topic, partition, None, value, message_headers, batch.acknowledgements, batch.describe)

    def send_due_batches(self) -> None:
        for closed in self._batches.due():
            self._send_batch(*closed)

    # ------------------------------------------------------------------------------------------ Kafka

    def _produce(self, topic: str, partition: int, key: bytes | None, value: bytes,
                 message_headers: list[tuple[str, bytes]], acknowledgements: list[Acknowledge],
                 describe: Callable[[], str], size_of_headers: int | None = None) -> None:
        limit = self._topics.limits(topic).max_message_bytes
        self.last_sent[(topic, partition)] = time.monotonic()
        if size_of_headers is None:
            size_of_headers = header_bytes(message_headers)
        room = limit - RECORD_OVERHEAD_BYTES - SAFETY_MARGIN_BYTES - size_of_headers - len(key or b"")
        if len(value) <= room:
            self._send(topic, partition, key, value, message_headers, self._on_delivery(acknowledgements, describe,
                                                                                        topic, len(value)))
            return
        if self._encoding.large_messages is LargeMessages.FAIL:
            raise FatalError(
                f"{describe()} makes a message of {len(value)} bytes, over what topic {topic} accepts "
                f"({limit} bytes, its max.message.bytes). Run with --large-message fragment (the default) to send it "
                "in fragments, or raise the topic's max.message.bytes")
        slices = list(fragments.split(value, limit - overhead(key, message_headers + fragments.bound_headers())))
        remaining = [len(slices)]

        def fragment_acknowledged() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                for acknowledge in acknowledgements:
                    acknowledge()

        delivered = self._on_delivery([fragment_acknowledged], describe, topic, len(value))
        for piece, fragment_headers in slices:
            self._send(topic, partition, key, piece, message_headers + fragment_headers, delivered)

    def _on_delivery(self, acknowledgements: list[Acknowledge], describe: Callable[[], str], topic: str,
                     size: int) -> Callable[[KafkaError | None, Message], None]:
        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is None:
                self.delivered += 1
                for acknowledge in acknowledgements:
                    acknowledge()
            else:
                self._not_delivered(error, describe, topic, size)

        return delivered

    def _not_delivered(self, error: KafkaError, describe: Callable[[], str], topic: str, size: int) -> None:
        if self.delivery_error is not None:
            return
        self.delivery_error = f"{error} for {describe()} ({size} bytes) on topic {topic}"
        if error.code() in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE):
            self.delivery_error += (": the topic's max.message.bytes is below what the producer read at "
                                    "start (lowered while it ran?); restart it to read the limit again")
        elif error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            self.delivery_error += ": grant this principal Write on the topic"

    def _send(self, topic: str, partition: int, key: bytes | None, value: bytes,
              message_headers: list[tuple[str, bytes]], delivered: Callable[[KafkaError | None, Message], None]) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, partition=partition, headers=message_headers,
                                       on_delivery=delivered)
                return
            except BufferError:
                self.poll(0.05)
                if self.refused is not None:
                    raise FatalError(f"Kafka refused: {self.refused.str()}") from None
            except KafkaException as exc:
                raise FatalError(f"Kafka refused a message for topic {topic} ({len(value)} bytes): {exc}") from exc

    def poll(self, timeout: float = 0.0) -> None:
        try:
            self._producer.poll(timeout)
        except KafkaException as exc:
            self.refused = exc.args[0]

    def outstanding(self) -> int:
        """Messages handed to Kafka and not yet acknowledged."""
        return len(self._producer)  # type: ignore[arg-type]

    def flush(self, timeout: float) -> int:
        """Send open batches and wait for outstanding acknowledgements; returns how many are still outstanding."""
        for closed in self._batches.drain():
            self._send_batch(*closed)
        try:
            return self._producer.flush(timeout)
        except KafkaException as exc:
            self.refused = exc.args[0]
            return len(self._producer)  # type: ignore[arg-type]
