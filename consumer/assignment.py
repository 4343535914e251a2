"""Where a partition resumes when this consumer is given it: after the last message both its destination checkpoint
and Kafka's committed offset say is applied, whichever is further, but only if they were saved for the topic that
exists now. A topic deleted and re-created under the same name gets a new topic id: positions saved for the old
one are ignored, with a warning, and the partition starts as a new group's would (`auto.offset.reset`)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from kafkashake.consumer.checkpoint import ConsumerCheckpointStore, PartitionPosition

log = logging.getLogger("kafkashake.consumer")
ADMIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Resume:
    offset: int
    saved: PartitionPosition | None
    topic_id: str | None


def topic_ids(admin: AdminClient, names: set[str]) -> dict[str, str]:
    """Kafka's ids of the topics (KIP-516); topics it cannot describe are left out."""
    if not names:
        return {}
    ids: dict[str, str] = {}
    for name, future in admin.describe_topics(TopicCollection(sorted(names))).items():
        try:
            ids[name] = str(future.result(timeout=ADMIN_TIMEOUT_S).topic_id)
        except (KafkaException, TimeoutError) as exc:  # Kafka out of reach: the id is checked again later
            log.warning("cannot read the topic's id; saved positions are used without checking it",
                        extra={"topic": name, "error": str(exc)})
    return ids


def _high_watermark(consumer: Consumer, tp: TopicPartition) -> int:
    try:
        return consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=ADMIN_TIMEOUT_S)[1]
    except KafkaException:
        return 2**63 - 1


def resume_points(consumer: Consumer, admin: AdminClient, store: ConsumerCheckpointStore,
                  partitions: list[TopicPartition], call: Callable) -> dict[tuple[str, int], Resume]:  # type: ignore[type-arg]
    committed = {(tp.topic, tp.partition): tp for tp in consumer.committed(partitions, timeout=ADMIN_TIMEOUT_S)}
    ids = topic_ids(admin, {tp.topic for tp in partitions})
    points: dict[tuple[str, int], Resume] = {}
    for tp in partitions:
        where = (tp.topic, tp.partition)
        topic_id = ids.get(tp.topic)
        saved = call(lambda: store.load(tp.topic, tp.partition), "loading the consumer checkpoint")
        if saved is not None and topic_id and saved.topic_id and saved.topic_id != topic_id:
            log.warning("the saved position belongs to an earlier topic of the same name (deleted and re-created): "
                        "ignoring it; this partition starts as a new group would",
                        extra={"topic": tp.topic, "partition": tp.partition, "saved_for_topic_id": saved.topic_id,
                               "topic_id": topic_id, "saved_offset": saved.offset})
            saved = None
        if saved is not None and saved.offset >= _high_watermark(consumer, tp):
            log.warning("the saved position lies beyond the end of the partition, so it was saved for another topic "
                        "of this name (deleted and re-created): ignoring it; this partition starts as a new group "
                        "would",
                        extra={"topic": tp.topic, "partition": tp.partition, "saved_offset": saved.offset})
            saved = None
        kafka = committed.get(where)
        kafka_offset = kafka.offset if kafka is not None and kafka.offset >= 0 else OFFSET_INVALID
        if kafka_offset != OFFSET_INVALID and topic_id and kafka.metadata and kafka.metadata != topic_id:
            log.warning("Kafka's committed offset belongs to an earlier topic of the same name (deleted and "
                        "re-created): ignoring it",
                        extra={"topic": tp.topic, "partition": tp.partition, "committed": kafka_offset})
            kafka_offset = OFFSET_INVALID
        resume = kafka_offset
        if saved is not None and saved.offset + 1 > resume:
            resume = saved.offset + 1
        points[where] = Resume(resume, saved, topic_id)
        log.info("partition assigned", extra={"topic": tp.topic, "partition": tp.partition, "committed": kafka_offset,
                                               "checkpoint": None if saved is None else saved.offset,
                                               "resume_offset": resume})
    return points


def is_incremental(config: dict) -> bool:  # type: ignore[type-arg]
    """Whether the group hands out partitions incrementally (KIP-848 or cooperative-sticky) rather than all at once."""
    strategy = str(config.get("partition.assignment.strategy", ""))
    return str(config.get("group.protocol", "classic")).lower() == "consumer" or "cooperative" in strategy
