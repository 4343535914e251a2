"""The consumer's Prometheus metrics."""
from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from kafkashake.consumer.conflicts import DUPLICATE_KEY, UPDATE_MISSING
from kafkashake.consumer.dead_letters import REASONS as DEAD_LETTER_REASONS
from kafkashake.runtime.version import VERSION

# Every reason an event is passed over, so each series exists (at 0) before its first event.
PASSED_OVER = ("noop", "command", "filtered", "internal_namespace", "invalidate", "history_gap", "snapshot_overlap",
               "replayed", "already_applied")


class ConsumerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages_consumed = Counter(
            "kafkashake_consumer_messages_consumed", "Kafka messages received.", registry=r
        )
        self.events_applied = Counter(
            "kafkashake_consumer_events_applied", "Events written to the destination, by op.", ["op"], registry=r
        )
        self.events_passed_over = Counter(
            "kafkashake_consumer_events_passed_over",
            "Events deliberately not applied (no-ops, commands, internal namespaces), by reason.",
            ["reason"],
            registry=r,
        )
        self.conflicts = Counter("kafkashake_consumer_conflicts", "Conflicts, by kind.", ["kind"], registry=r)
        self.dead_letters = Counter("kafkashake_consumer_dead_letters", "Messages sent to the dead-letter topic, by "
                                    "reason.", ["reason"], registry=r)
        self.kafka_lag = Gauge("kafkashake_consumer_kafka_lag_messages", "Messages between the consumer's position "
                               "and the partition's end.", ["partition"], registry=r)
        self.lag = Gauge(
            "kafkashake_consumer_lag_seconds", "How far the destination is behind the source: 0 when every change "
            "the producer had read is applied; grows while the consumer, Kafka or the producer fall behind.",
            registry=r,
        )
        self.held_changes = Gauge("kafkashake_consumer_held_changes", "Changes of collections with a unique index "
                                  "besides _id, held until every partition of their topic is complete through them "
                                  "(they apply in source order).", registry=r)
        self.parked_changes = Gauge(
            "kafkashake_consumer_parked_changes", "Changes of a copy or of a replayed window whose document a unique "
            "index refused for a value another document holds until a later change frees it: written again with "
            "each batch, their partitions' checkpoints kept before them.", registry=r)
        self.write_lanes = Gauge("kafkashake_consumer_write_lanes", "Concurrent ordered bulk writes per collection "
                                 "(--write-lanes; measured while running unless given).", registry=r)
        self.delay = Gauge("kafkashake_consumer_delay_seconds", "The target delay in force.", registry=r)
        self.checkpoint_ts = Gauge(
            "kafkashake_consumer_checkpoint_timestamp_seconds", "Source time of the newest checkpointed event.", registry=r
        )
        self.partitions_paused = Gauge("kafkashake_consumer_partitions_paused", "Partitions paused.", registry=r)
        self.bulk_write_seconds = Histogram(
            "kafkashake_consumer_bulk_write_seconds", "Time to apply one batch to the destination.", registry=r
        )
        for op in ("i", "u", "d", "c"):
            self.events_applied.labels(op)
        for reason in PASSED_OVER:
            self.events_passed_over.labels(reason)
        for kind in (DUPLICATE_KEY, UPDATE_MISSING):
            self.conflicts.labels(kind)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        Info("kafkashake_build", "Build and role.", registry=r).info(
            {"version": VERSION, "role": "consumer", "fetch_method": "", "format": ""}
        )

    def read_statistics(self, document: str) -> None:
        """librdkafka's statistics (every statistics.interval.ms) already hold each partition's lag in messages."""
        try:
            topics = json.loads(document).get("topics", {})
        except ValueError:
            return
        for topic in topics.values():
            for partition, values in topic.get("partitions", {}).items():
                lag = values.get("consumer_lag", -1)
                if partition != "-1" and lag >= 0:
                    self.kafka_lag.labels(partition).set(lag)
