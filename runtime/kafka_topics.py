"""Kafka topics a process writes to: created on first use, each one's partition count and message-size limit
read from the brokers and remembered."""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from kafkashake.runtime.errors import FatalError
from kafkashake.runtime.kafka_health import KafkaHealth

log = logging.getLogger(__name__)
ADMIN_TIMEOUT_S = 30.0
DESCRIBE_ATTEMPTS = 10
# Apache Kafka's default message.max.bytes (1 MiB + 12 bytes of log overhead), assumed when a topic's own limit
# cannot be read.
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
# librdkafka's default batch.size: the most bytes it puts in one record batch (one message alone may exceed it).
LIBRDKAFKA_DEFAULT_BATCH_SIZE = 1_000_000
# Producer- and consumer-only settings the admin client would warn about or refuse.
CLIENT_SPECIFIC = frozenset({
    "enable.idempotence", "acks", "partitioner", "linger.ms", "compression.type", "message.max.bytes", "group.id",
    "enable.auto.commit", "enable.auto.offset.store", "auto.offset.reset", "enable.partition.eof", "stats_cb",
    "statistics.interval.ms", "session.timeout.ms", "heartbeat.interval.ms", "topic.metadata.refresh.interval.ms",
    "max.poll.interval.ms", "fetch.wait.max.ms", "batch.size", "group.protocol", "group.instance.id",
    "partition.assignment.strategy", "error_cb", "logger", "message.timeout.ms", "on_commit",
})


def admin_config(config: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in config.items() if name not in CLIENT_SPECIFIC}


@dataclass(frozen=True)
class TopicLimits:
    partitions: int
    max_message_bytes: int


class TopicDirectory:
    """Creates topics on first use (with `--partitions`, `--replication-factor` and `--topic-config`) and
    remembers each one's partition count and `max.message.bytes`."""

    def __init__(self, config: dict[str, Any], partitions: int, replication_factor: int,
                 topic_config: Mapping[str, str] | None = None, health: KafkaHealth | None = None) -> None:
        self._health = health
        self._admin = AdminClient({**admin_config(config), **(health.client_options() if health else {})})
        self._brokers = config["bootstrap.servers"]
        self._partitions = partitions
        self._replication_factor = replication_factor
        self._topic_config = dict(topic_config or {})
        self._batch_size = int(config.get("batch.size", LIBRDKAFKA_DEFAULT_BATCH_SIZE))
        self._known: dict[str, TopicLimits] = {}

    def partitions(self, topic: str) -> int:
        return self.limits(topic).partitions

    def limits(self, topic: str) -> TopicLimits:
        known = self._known.get(topic)
        if known is None:
            known = self._known[topic] = TopicLimits(self._ensure(topic), self._max_message_bytes(topic))
        return known

    def forget(self, topic: str) -> None:
        """Read the topic again on next use (it was deleted, re-created or re-configured)."""
        self._known.pop(topic, None)

    def existing(self) -> list[str]:
        """Names of the topics the brokers have now."""
        try:
            return sorted(self._admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics)
        except KafkaException as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: KafkaException) -> FatalError:
        otherwise = (f"cannot reach Kafka at {self._brokers}: {exc}. Check --brokers, the listeners the brokers "
                     "advertise and the security settings (--kafka-*)")
        if self._health is None:
            return FatalError(otherwise)
        self._admin.poll(0)  # serve the error callbacks: an authentication failure says more than a timeout
        return FatalError(self._health.failure(exc.args[0], otherwise))

    def _ensure(self, topic: str) -> int:
        try:
            # All topics: asking for one by name can make a broker with auto.create.topics.enable create it.
            metadata = self._admin.list_topics(timeout=ADMIN_TIMEOUT_S)
        except KafkaException as exc:
            raise self._unreachable(exc) from exc
        existing = metadata.topics.get(topic)
        if existing is not None and existing.error is None:
            return len(existing.partitions)
        if existing is not None and existing.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            raise FatalError(f"not authorised to describe topic {topic!r}: grant this principal Describe and Write "
                             "on it (and Create on the cluster for topics the producer creates)")
        new_topic = NewTopic(topic, self._partitions, self._replication_factor, config=self._topic_config)
        futures = self._admin.create_topics([new_topic], operation_timeout=ADMIN_TIMEOUT_S)
        try:
            futures[topic].result(timeout=ADMIN_TIMEOUT_S)
            log.info("created topic", extra={"topic": topic, "partitions": self._partitions,
                                             "config": self._topic_config or None})
        except KafkaException as exc:
            code = exc.args[0].code()
            if code == KafkaError.TOPIC_ALREADY_EXISTS:
                return self._ensure(topic)
            if code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
                raise FatalError(f"not authorised to create topic {topic!r}: {exc}. Create it yourself, or grant "
                                 "this principal Create on the cluster (or on the topic)") from exc
            raise FatalError(f"cannot create topic {topic!r}: {exc}. Create it yourself or grant CREATE") from exc
        return self._partitions

    def _describe_configs(self, topic: str) -> dict[str, Any]:
        """The topic's configuration; a topic created a moment ago may not be known to every broker yet."""
        resource = ConfigResource(ResourceType.TOPIC, topic)
        for attempt in range(DESCRIBE_ATTEMPTS):
            try:
                return self._admin.describe_configs([resource])[resource].result(timeout=ADMIN_TIMEOUT_S)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART or attempt == DESCRIBE_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    def _max_message_bytes(self, topic: str) -> int:
        try:
            limit = int(self._describe_configs(topic)["max.message.bytes"].value)
        except (KafkaException, KeyError, ValueError, TypeError) as exc:
            log.warning("cannot read the topic's max.message.bytes: assuming Kafka's default; grant DescribeConfigs "
                        "on the topic so messages are sized to its real limit",
                        extra={"topic": topic, "assumed": KAFKA_DEFAULT_MAX_MESSAGE_BYTES, "error": str(exc)})
            limit = KAFKA_DEFAULT_MAX_MESSAGE_BYTES
        if limit < self._batch_size:
            raise FatalError(f"topic {topic!r} accepts record batches of at most {limit} bytes (max.message.bytes), "
                             f"but the producer builds batches of up to {self._batch_size} bytes (batch.size), which "
                             f"the broker would refuse. Set -X batch.size={limit - 1024} or raise the topic's "
                             "max.message.bytes")
        return limit
