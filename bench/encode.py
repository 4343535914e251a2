"""Encode-path benchmark: our encoder + Kafka producer per format, against bare librdkafka produce of the
same event bytes (one BSON event per message), on the same broker in the same run.

Ratio = our events/s divided by the baseline's events/s; higher is better, 1.0 means as fast as bare produce.
Usage: python bench/encode.py [--events 50000] [--rounds 3] [--brokers HOST:PORT]
Without --brokers it starts the embedded Tansu broker. Writes bench/results/encode.json and reports the
change against the previous run's ratios (a drop of more than 10 % is flagged)."""
from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
import uuid
from pathlib import Path

import bson
from bson import Int64, ObjectId, Timestamp
from confluent_kafka import Producer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import report  # noqa: E402
from kafkashake.demo import embedded  # noqa: E402
from kafkashake.oplog.entry import Operation, transaction_id  # noqa: E402
from kafkashake.producer.publisher import PRODUCER_DEFAULTS, Encoding, Publisher  # noqa: E402
from kafkashake.runtime.kafka_topics import TopicDirectory  # noqa: E402
from kafkashake.schemas.codec import MessageFormat  # noqa: E402
from kafkashake.schemas.partitioning import PartitionBy, message_key, partition_for  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "encode.json"
PARTITIONS = 8


def synthetic_operations(count: int) -> list[Operation]:
    operations = []
    wall = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    for index in range(count):
        document_id = ObjectId()
        entry = {"op": "u" if index % 3 else "i", "ns": f"bench.c{index % 4}", "ts": Timestamp(1_800_000_000, index + 1),
                 "t": Int64(1), "v": Int64(2), "wall": wall,
                 "o": {"_id": document_id, "n": index, "name": f"user{index}", "tags": ["a", "b", "c"],
                       "profile": {"score": index / 7, "city": "Oslo", "since": wall}},
                 "o2": {"_id": document_id}}
        operations.append(Operation(entry["ts"], entry["op"], entry["ns"], document_id, bson.encode(entry), wall,
                                    transaction_id(entry)))
    return operations


def bare_produce(brokers: str, operations: list[Operation]) -> float:
    topic = f"bench-bare-{uuid.uuid4().hex[:6]}"
    TopicDirectory({"bootstrap.servers": brokers}, PARTITIONS, -1).partitions(topic)
    producer = Producer({"bootstrap.servers": brokers, **PRODUCER_DEFAULTS})
    messages = []
    for operation in operations:  # keys and partitions are prepared outside the timed loop: bare produce only
        key = message_key(PartitionBy.ID, operation.ns, operation.document_id)
        messages.append((operation.value, key, partition_for(key, PARTITIONS)))
    started = time.perf_counter()
    for value, key, partition in messages:
        while True:
            try:
                producer.produce(topic, value, key, partition=partition)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)
    return len(operations) / (time.perf_counter() - started)


def ours(brokers: str, operations: list[Operation], message_format: MessageFormat) -> float:
    topic = f"bench-{message_format.value}-{uuid.uuid4().hex[:6]}"
    config = {"bootstrap.servers": brokers, **PRODUCER_DEFAULTS}
    directory = TopicDirectory(config, PARTITIONS, -1)
    directory.partitions(topic)
    publisher = Publisher(config, topic, "bench", Encoding(message_format), PartitionBy.ID, directory)
    acknowledged = [0]

    def acknowledge() -> None:
        acknowledged[0] += 1

    started = time.perf_counter()
    for operation in operations:
        publisher.publish(operation, acknowledge)
        publisher.send_due_batches()
        publisher.poll(0)
    publisher.flush(120)
    elapsed = time.perf_counter() - started
    assert acknowledged[0] == len(operations), (acknowledged[0], len(operations))
    return len(operations) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--brokers")
    args = parser.parse_args()

    stack = None
    brokers = args.brokers
    if brokers is None:
        stack = embedded.EmbeddedStack()
        brokers = embedded.brokers(stack.start_kafka())
    try:
        operations = synthetic_operations(args.events)
        samples: dict[str, list[float]] = {"baseline": [], **{f.value: [] for f in MessageFormat}}
        for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits every series alike
            samples["baseline"].append(bare_produce(brokers, operations))
            for message_format in MessageFormat:
                samples[message_format.value].append(ours(brokers, operations, message_format))
    finally:
        if stack is not None:
            stack.close()

    baseline = statistics.median(samples["baseline"])
    rates = {f.value: statistics.median(samples[f.value]) for f in MessageFormat}
    return report(RESULTS, baseline, rates, "events", {"events": args.events, "rounds": args.rounds})

if __name__ == "__main__":
    raise SystemExit(main())
