"""Consumer catch-up: apply a backlog of insert events, and separately of update events, with the real consumer loop
(in process), against a bare `insert_many` of the same documents and a bare `bulk_write` of equivalent updates, on
the same server in the same run.

Ratio = our events/s divided by the baseline's; goal ≥ 0.7. Our rate is timed from the first applied batch to the
last (the consumer-group join before it is not replay work).
Usage: python bench/consumer_catchup.py [--events 100000] [--rounds 3]
Starts embedded SecantusDB and Tansu. Writes bench/results/consumer_catchup.json; flags ratios >10 % below the
previous run's."""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import bson
from bson.timestamp import Timestamp
from confluent_kafka import Producer
from pymongo import MongoClient, UpdateOne

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.in_process import rate_through_backlog  # noqa: E402
from bench.report import report  # noqa: E402
from kafkashake.consumer.run import ConsumerRun  # noqa: E402
from kafkashake.consumer.settings import ConsumerSettings  # noqa: E402
from kafkashake.demo import embedded  # noqa: E402
from kafkashake.runtime.kafka_topics import TopicDirectory  # noqa: E402
from kafkashake.runtime.shutdown import ShutdownFlag  # noqa: E402
from kafkashake.schemas.partitioning import PartitionBy, message_key, partition_for  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "consumer_catchup.json"  # _inserts and _updates
PARTITIONS = 8
FAST_GROUP = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}


def documents(count: int) -> list[dict]:
    return [{"_id": i, "n": i, "name": f"user{i}", "tags": ["a", "b"], "profile": {"score": i / 7, "city": "Oslo"}}
            for i in range(count)]


def events(kind: str, ns: str, docs: list[dict]) -> list[tuple[dict, bytes]]:
    out = []
    for i, document in enumerate(docs):
        ts = Timestamp(1_800_000_000, i + 1)
        if kind == "insert":
            event = {"op": "i", "ns": ns, "o": document, "ts": ts}
        else:
            event = {"op": "u", "ns": ns, "o": {"$v": 2, "diff": {"u": {"n": -document["n"], "name": "renamed"}}},
                     "o2": {"_id": document["_id"]}, "ts": ts}
        out.append((document, bson.encode(event)))
    return out


def publish(brokers: str, topic: str, ns: str, encoded: list[tuple[dict, bytes]]) -> None:
    TopicDirectory({"bootstrap.servers": brokers}, PARTITIONS, -1).partitions(topic)
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 20})
    for document, value in encoded:
        key = message_key(PartitionBy.ID, ns, document["_id"])
        while True:
            try:
                producer.produce(topic, value, key, partition=partition_for(key, PARTITIONS))
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)


def ours(uri: str, brokers: str, topic: str, expected: int) -> float:
    settings = ConsumerSettings(brokers=brokers, topic=topic, dest_uri=uri, group=f"bench-{uuid.uuid4().hex[:6]}",
                                kafka_properties=FAST_GROUP, metrics_port=0)
    return rate_through_backlog(ConsumerRun(settings, ShutdownFlag()), "kafkashake_consumer_events_applied", expected)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    docs = documents(args.events)
    samples: dict[str, list[float]] = {name: [] for name in ("insert_baseline", "insert", "update_baseline", "update")}
    with embedded.EmbeddedStack() as stack:
        destination = stack.start_mongo("catchup-dest")
        uri = embedded.mongo_uri(destination)
        client = MongoClient(uri)
        brokers = embedded.brokers(stack.start_kafka())
        for round_ in range(args.rounds):
            db = client[f"bench{round_}"]
            started = time.perf_counter()
            db.bare.insert_many(docs)
            samples["insert_baseline"].append(len(docs) / (time.perf_counter() - started))
            started = time.perf_counter()
            db.bare.bulk_write([UpdateOne({"_id": d["_id"]}, {"$set": {"n": -d["n"], "name": "renamed"}})
                                for d in docs])
            samples["update_baseline"].append(len(docs) / (time.perf_counter() - started))

            ns = f"bench{round_}.items"
            inserts = f"inserts-{uuid.uuid4().hex[:6]}"
            publish(brokers, inserts, ns, events("insert", ns, docs))
            samples["insert"].append(ours(uri, brokers, inserts, len(docs)))
            updates = f"updates-{uuid.uuid4().hex[:6]}"
            publish(brokers, updates, ns, events("update", ns, docs))
            samples["update"].append(ours(uri, brokers, updates, len(docs)))
            assert db["items"].count_documents({"name": "renamed"}) == len(docs)
    insert_rate, update_rate = statistics.median(samples["insert"]), statistics.median(samples["update"])
    insert_base, update_base = statistics.median(samples["insert_baseline"]), statistics.median(samples["update_baseline"])
    print("inserts (baseline: bare insert_many)")
    status = report(RESULTS.with_name("consumer_catchup_inserts.json"), insert_base, {"insert": insert_rate}, "events",
                    {"events": args.events, "rounds": args.rounds})
    print("updates (baseline: bare bulk_write of UpdateOne $set)")
    return status | report(RESULTS.with_name("consumer_catchup_updates.json"), update_base, {"update": update_rate},
                           "events", {"events": args.events, "rounds": args.rounds})


if __name__ == "__main__":
    raise SystemExit(main())
