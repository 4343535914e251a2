"""Publishing operations to Kafka with an idempotent producer, and making sure the topic exists."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from oplog.entry import Operation
from runtime.errors import FatalError
from schemas import WIRE_VERSION, headers
from schemas.codec import MessageFormat
from schemas.partitioning import PartitionBy, message_key

log = logging.getLogger(__name__)

PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "partitioner": "murmur2_random",
    "linger.ms": 5,
    "compression.type": "none",
    "message.max.bytes": 16 * 1024 * 1024 + 64 * 1024,
}
ADMIN_TIMEOUT_S = 30.0


def ensure_topic(config: dict[str, Any], topic: str, partitions: int, replication_factor: int) -> int:
    """Create `topic` if missing; return its partition count."""
    admin = AdminClient({key: value for key, value in config.items() if key not in PRODUCER_DEFAULTS})
    try:
        metadata = admin.list_topics(timeout=ADMIN_TIMEOUT_S)
    except KafkaException as exc:
        raise FatalError(
            f"cannot reach Kafka at {config['bootstrap.servers']}: {exc}. Check --brokers and that the brokers are up"
        ) from exc
    existing = metadata.topics.get(topic)
    if existing is not None and existing.error is None:
        return len(existing.partitions)
    futures = admin.create_topics([NewTopic(topic, partitions, replication_factor)], operation_timeout=ADMIN_TIMEOUT_S)
    try:
        futures[topic].result(timeout=ADMIN_TIMEOUT_S)
        log.info("created topic", extra={"topic": topic, "partitions": partitions})
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise FatalError(f"cannot create topic {topic!r}: {exc}") from exc
    return partitions


class Publisher:
    """Encodes operations as messages and hands them to librdkafka; acknowledgements come back through `poll`."""

    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        task: str,
        message_format: MessageFormat,
        partition_by: PartitionBy,
    ) -> None:
        self._producer = Producer(config)
        self._topic = topic
        self._partition_by = partition_by
        self._static_headers = [
            (headers.FORMAT, message_format.value.encode()),
            (headers.WIRE_VERSION, str(WIRE_VERSION).encode()),
            (headers.TASK, task.encode()),
        ]
        self.delivery_error: str | None = None

    def publish(self, operation: Operation, on_acknowledged: Callable[[], None]) -> None:
        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is None:
                on_acknowledged()
            elif self.delivery_error is None:
                self.delivery_error = str(error)

        message_headers = self._static_headers + [
            (headers.NAMESPACE, operation.ns.encode()),
            (headers.OPERATION, operation.op.encode()),
            (headers.SOURCE_TS, headers.position_text(operation.ts).encode()),
        ]
        key = message_key(self._partition_by, operation.ns, operation.document_id)
        while True:
            try:
                self._producer.produce(
                    self._topic, value=operation.value, key=key, headers=message_headers, on_delivery=delivered
                )
                return
            except BufferError:
                self._producer.poll(0.05)

    def poll(self, timeout: float = 0.0) -> None:
        self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        """Wait for outstanding acknowledgements; returns how many are still outstanding."""
        return self._producer.flush(timeout)
