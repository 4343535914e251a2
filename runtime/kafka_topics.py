"""Kafka topics a process writes to: created on first use, with each one's partition count remembered."""
from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from runtime.errors import FatalError

log = logging.getLogger(__name__)
ADMIN_TIMEOUT_S = 30.0
# Producer- and consumer-only settings the admin client would warn about or refuse.
CLIENT_SPECIFIC = frozenset({
    "enable.idempotence", "acks", "partitioner", "linger.ms", "compression.type", "message.max.bytes", "group.id",
    "enable.auto.commit", "enable.auto.offset.store", "auto.offset.reset", "enable.partition.eof", "stats_cb",
    "statistics.interval.ms", "session.timeout.ms", "heartbeat.interval.ms", "topic.metadata.refresh.interval.ms",
    "max.poll.interval.ms", "fetch.wait.max.ms",
})


class TopicDirectory:
    """Creates topics on first use and remembers each one's partition count."""

    def __init__(self, config: dict[str, Any], partitions: int, replication_factor: int) -> None:
        self._admin = AdminClient({k: v for k, v in config.items() if k not in CLIENT_SPECIFIC})
        self._brokers = config["bootstrap.servers"]
        self._partitions = partitions
        self._replication_factor = replication_factor
        self._known: dict[str, int] = {}

    def partitions(self, topic: str) -> int:
        known = self._known.get(topic)
        if known is None:
            known = self._known[topic] = self._ensure(topic)
        return known

    def _ensure(self, topic: str) -> int:
        try:
            metadata = self._admin.list_topics(timeout=ADMIN_TIMEOUT_S)
        except KafkaException as exc:
            raise FatalError(
                f"cannot reach Kafka at {self._brokers}: {exc}. Check --brokers and that the brokers are up"
            ) from exc
        existing = metadata.topics.get(topic)
        if existing is not None and existing.error is None:
            return len(existing.partitions)
        new_topic = NewTopic(topic, self._partitions, self._replication_factor)
        futures = self._admin.create_topics([new_topic], operation_timeout=ADMIN_TIMEOUT_S)
        try:
            futures[topic].result(timeout=ADMIN_TIMEOUT_S)
            log.info("created topic", extra={"topic": topic, "partitions": self._partitions})
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise FatalError(f"cannot create topic {topic!r}: {exc}. Create it yourself or grant CREATE") from exc
            return self._ensure(topic)
        return self._partitions
