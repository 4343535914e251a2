"""Changes of every size up to MongoDB's 16 MB limit, through Apache Kafka with its default 1 MiB message limit:
documents of 4 KiB and more (which pymongo hands out as memoryviews), values larger than a message (fragments), raw
batches sized to the topic's real limit, and `--large-message fail` naming the change."""
from __future__ import annotations

import os

import pytest
from bson import Binary, Int64
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from conftest import checkpointed, client, consumer_args, producer_args, unique, wait_until
from kafkashake.schemas import fragments, headers
from test_pipeline import wait_equal

pytestmark = pytest.mark.e2e

KIB, MIB = 1024, 1024 * 1024
# 100 B to just under 16 MB: below pymongo's 4 KiB memoryview threshold, above it, around Kafka's 1 MiB limit, and
# MongoDB's own limit (an update's oplog entry carries the whole 16 MB value too).
SIZES = [100, 4 * KIB, 64 * KIB, MIB - 512, MIB + 1, 4 * MIB, 16 * MIB - 4 * KIB]


def topic_limit(brokers: str, topic: str) -> int:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    admin = AdminClient({"bootstrap.servers": brokers})
    entries = admin.describe_configs([resource])[resource].result(30)
    return int(entries["max.message.bytes"].value)


def raw_messages(brokers: str, topic: str) -> list:
    """Every Kafka message of the topic as it is stored, fragments included."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": brokers, "group.id": unique("sizes"), "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(8)])
    messages, at_end = [], set()
    while len(at_end) < 8:
        for message in consumer.consume(100, 1.0):
            if message.error() is None:
                messages.append(message)
                at_end.discard(message.partition())
            else:
                at_end.add(message.partition())
    consumer.close()
    return messages


@pytest.mark.parametrize("fetch_method", ["oplog", "change_stream"])
@pytest.mark.parametrize("message_format", ["raw", "json", "bson"])
def test_every_size_up_to_16_mb_replicates_with_kafkas_default_limit(source, destination, brokers, cli,
                                                                     message_format: str, fetch_method: str) -> None:
    topic = unique(f"sizes-{message_format}-{fetch_method}")
    producer = cli(*producer_args(source, brokers, topic, "--format", message_format, "--fetch-method", fetch_method,
                                  "--start-position", "earliest" if fetch_method == "oplog" else "latest"),
                   name="producer").start()
    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    wait_until(lambda: checkpointed(source), 60, "the producer's first checkpoint")
    docs = client(source)["sizes"]["docs"]
    for number, size in enumerate(SIZES):
        # Random bytes do not compress, and JSON writes them as base64: the json value is a third larger.
        docs.insert_one({"_id": number, "blob": Binary(os.urandom(size)), "n": Int64(number)})
        docs.update_one({"_id": number}, {"$set": {"blob": Binary(os.urandom(size)), "after": True},
                                          "$inc": {"n": 1}})
    wait_equal(source, destination, "sizes", timeout=300)
    assert producer.terminate() == 0, producer.log()
    assert consumer.terminate() == 0, consumer.log()

    limit = topic_limit(brokers, topic)
    assert limit == 1_048_588, "the broker keeps Kafka's default message.max.bytes"
    stored = raw_messages(brokers, topic)
    assert max(len(m.value() or b"") for m in stored) < limit
    fragment_counts = {headers.as_dict(m.headers())[fragments.FRAGMENT_ID] for m in stored
                       if fragments.is_fragment(headers.as_dict(m.headers()))}
    assert len(fragment_counts) >= 6, "the changes above 1 MiB travelled in fragments"


def test_raw_batches_stay_under_the_topics_limit_in_a_catch_up(source, destination, brokers, cli) -> None:
    """A backlog of 20 KB documents once made raw batches of 1,051,333 bytes against the 1,048,588 default."""
    topic = unique("raw-sizing")
    docs = client(source)["backlog"]["docs"]
    docs.insert_many([{"_id": i, "blob": Binary(os.urandom(20_000))} for i in range(400)])
    producer = cli(*producer_args(source, brokers, topic, "--start-position", "earliest"), name="producer").start()
    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    wait_equal(source, destination, "backlog", timeout=180)
    assert producer.terminate() == 0 and consumer.terminate() == 0
    stored = raw_messages(brokers, topic)
    limit = topic_limit(brokers, topic)
    sizes = [len(m.value()) for m in stored if headers.as_dict(m.headers()).get(headers.HEARTBEAT) != "true"]
    assert max(sizes) > limit // 2, "batches were filled, not cut short"
    assert max(sizes) < limit and not any(fragments.is_fragment(headers.as_dict(m.headers())) for m in stored)


def test_large_message_fail_names_the_change_and_the_setting(source, brokers, cli) -> None:
    topic = unique("too-large")
    producer = cli(*producer_args(source, brokers, topic, "--format", "bson", "--start-position", "earliest",
                                  "--large-message", "fail"), name="producer").start()
    client(source)["big"]["docs"].insert_one({"_id": "the-large-one", "blob": Binary(os.urandom(2 * MIB))})
    assert producer.wait(120) == 1
    log = producer.log()
    assert "big.docs" in log and "the-large-one" in log and "--large-message fragment" in log
    assert "max.message.bytes" in log and "bytes" in log
