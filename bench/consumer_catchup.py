"""Consumer catch-up: the real `kafkashake consumer run` applies a backlog of insert events, then of update events,
against the fastest bare client doing the same writes, on the same server in the same run, on Apache Kafka and Tansu;
directly, and with the destination behind bench/latency_proxy.py (5 ms each way, 10 ms round trip).

Baselines, the fastest in each round of:
- inserts: unordered bulk inserts (`insert_many(ordered=False)`) in batches of 500, 1,000 and 2,000 documents;
- updates: unordered `bulk_write` of `UpdateOne($set)` of the same fields, in batches of 500, 1,000 and 2,000;
- behind the proxy: batches of 1,000 from 1, 4 and 8 threads writing disjoint batches at once, and of 2,000 from
  4 threads, as a tuned client of a distant server would.
Ours: the consumer process, timed through its /metrics from the first event applied to the last.
Each baseline way and ours start on a fresh, empty destination server (bench/harness.py fresh_mongo): the test
server slows as its history grows, which favoured whatever ran first.

Ratio = ours / the fastest baseline. Goals: ≥ 0.7 for inserts and updates, directly and behind the proxy.
Usage: python bench/consumer_catchup.py [--events 100000] [--rounds 3] [--brokers kafka,tansu] [--latency-ms 5]
Writes bench/results/consumer_catchup_<broker>.json; flags ratios >10 % below the previous run's."""
from __future__ import annotations

import argparse
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bson
from bson.timestamp import Timestamp
from confluent_kafka import Producer
from pymongo import InsertOne, MongoClient, UpdateOne

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import BROKER_NAMES, GROUP_OPTIONS, Process, broker, fresh_mongo, medians, rate_through  # noqa: E402
from bench.report import report  # noqa: E402
from kafkashake.demo import embedded  # noqa: E402
from kafkashake.runtime.kafka_topics import TopicDirectory  # noqa: E402
from kafkashake.schemas.partitioning import PartitionBy, message_key, partition_for  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PARTITIONS = 8
DIRECT_WAYS = ((500, 1), (1_000, 1), (2_000, 1))  # (batch size, threads)
DISTANT_WAYS = ((1_000, 1), (1_000, 4), (1_000, 8), (2_000, 4))


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


def bare(collection, requests: list, batch_size: int, threads: int) -> float:
    """Requests/s writing `requests` in unordered bulk writes of `batch_size`, `threads` at a time."""
    batches = [requests[start:start + batch_size] for start in range(0, len(requests), batch_size)]
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda batch: collection.bulk_write(batch, ordered=False), batches))
    return len(requests) / (time.perf_counter() - started)


def fastest_bare(stack, docs: list[dict], ways: tuple[tuple[int, int], ...], latency_ms: float,
                 tried: dict) -> tuple[float, float]:
    """The fastest bare insert and update rates over (batch size, threads) ways; every way on a fresh server."""
    inserts, updates = [], []
    for size, count in ways:
        with fresh_mongo(stack, "bare", latency_ms) as uri:
            collection = MongoClient(uri)["bare"]["items"]
            inserts.append((bare(collection, [InsertOne(d) for d in docs], size, count), f"insert {size}x{count}"))
            ops = [UpdateOne({"_id": d["_id"]}, {"$set": {"n": -d["n"], "name": "renamed"}}) for d in docs]
            updates.append((bare(collection, ops, size, count), f"update {size}x{count}"))
            collection.database.client.close()
    for rate, name in inserts + updates:
        tried.setdefault(name, []).append(rate)
    return max(inserts)[0], max(updates)[0]


def ours(stack, uri: str, brokers: str, topic: str, expected: int) -> float:
    process = Process(stack, "consumer", "run", "--dest-uri", uri, "--brokers", brokers, "--topic", topic,
                      "--group", f"bench-{uuid.uuid4().hex[:6]}", *GROUP_OPTIONS)
    try:
        return rate_through(process, "kafkashake_consumer_events_applied", expected)
    finally:
        process.stop()


def one_round(stack, brokers: str, docs: list[dict], ways: tuple[tuple[int, int], ...], latency_ms: float,
              tried: dict, samples: dict[str, list[float]]) -> None:
    """The baselines, then ours, each on a fresh destination: inserts, then updates of the documents inserted."""
    insert_base, update_base = fastest_bare(stack, docs, ways, latency_ms, tried)
    samples["insert_baseline"].append(insert_base)
    samples["update_baseline"].append(update_base)
    ns = "ours.items"
    with fresh_mongo(stack, "ours", latency_ms) as uri:
        for kind in ("insert", "update"):
            topic = f"{kind}s-{uuid.uuid4().hex[:6]}"
            publish(brokers, topic, ns, events(kind, ns, docs))
            samples[kind].append(ours(stack, uri, brokers, topic, len(docs)))
        with MongoClient(uri) as client:
            applied = client["ours"]["items"].count_documents({"name": "renamed"})
        assert applied == len(docs), f"{applied} of {len(docs)} updates applied{' (proxied)' if latency_ms else ''}"


def run_on(kind: str, stack, docs: list[dict], rounds: int, latency_ms: float) -> int:
    status = 0
    with broker(kind, stack) as brokers:
        for proxied in (False, True):
            samples: dict[str, list[float]] = {name: [] for name in ("insert_baseline", "insert", "update_baseline",
                                                                     "update")}
            tried: dict[str, list[float]] = {}
            for _ in range(rounds):
                one_round(stack, brokers, docs, DISTANT_WAYS if proxied else DIRECT_WAYS,
                          latency_ms if proxied else 0.0, tried, samples)
            rates = medians(samples)
            where = f"behind {2 * latency_ms:g} ms round trip" if proxied else "direct"
            name = f"consumer_catchup_{kind}{'_latency' if proxied else ''}.json"
            details = {"broker": BROKER_NAMES[kind], "destination": where, "events": len(docs), "rounds": rounds,
                       "baselines_tried": {k: round(v) for k, v in medians(tried).items()}}
            print(f"{BROKER_NAMES[kind]}, destination {where}")
            status |= report(RESULTS / name.replace(".json", "_inserts.json"), rates["insert_baseline"],
                             {"insert": rates["insert"]}, "events", {**details, "baseline": "fastest bare insert"})
            status |= report(RESULTS / name.replace(".json", "_updates.json"), rates["update_baseline"],
                             {"update": rates["update"]}, "events", {**details, "baseline": "fastest bare update"})
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--brokers", default="kafka,tansu")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="the proxy's delay in each direction")
    args = parser.parse_args()
    docs = documents(args.events)
    status = 0
    with embedded.EmbeddedStack() as stack:
        for kind in args.brokers.split(","):
            status |= run_on(kind, stack, docs, args.rounds, args.latency_ms)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
