"""Consumer catch-up: the real `kafkashake consumer run` applies a backlog of insert events, then of update events,
against the fastest bare client doing the same writes, on the same server in the same run, on Apache Kafka and Tansu;
directly, and with the destination behind bench/latency_proxy.py (5 ms each way, 10 ms round trip).

Baselines, the fastest in each round of:
- inserts: unordered bulk inserts (`insert_many(ordered=False)`) in batches of 500, 1,000 and 2,000 documents;
- updates: unordered `bulk_write` of `UpdateOne($set)` of the same fields, in batches of 500, 1,000 and 2,000;
- behind the proxy: batches of 1,000 from 1, 4 and 8 threads writing disjoint batches at once, and of 2,000 from
  4 threads, as a tuned client of a distant server would.
Ours: the consumer process, timed through its /metrics from the first event applied to the last.
Each records the CPU per event of the destination server (and for ours, of the broker and the consumer, from the
moment the consumer's /metrics is up to its last event applied) in `cpu_us_per_event` (medians).
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

from bench.harness import (BROKER_NAMES, CpuMeter, consumer_process, fresh_mongo, medians, rate_through,  # noqa: E402
                           running_broker)
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
                 tried: dict, cpu: dict[str, dict[str, list[float]]]) -> tuple[float, float]:
    """The fastest bare insert and update rates over (batch size, threads) ways, every way on a fresh server; the
    destination's CPU per write of the fastest of each goes to `cpu`."""
    inserts, updates = [], []
    for size, count in ways:
        with fresh_mongo(stack, "bare", latency_ms) as server:
            collection = MongoClient(server.uri)["bare"]["items"]
            for requests, results, name in (
                    ([InsertOne(d) for d in docs], inserts, "insert"),
                    ([UpdateOne({"_id": d["_id"]}, {"$set": {"n": -d["n"], "name": "renamed"}}) for d in docs],
                     updates, "update")):
                meter = CpuMeter({"destination": server.pid})
                meter.start()
                rate = bare(collection, requests, size, count)
                meter.stop(len(requests))
                results.append((rate, f"{name} {size}x{count}", meter))
            collection.database.client.close()
    for rate, name, _ in inserts + updates:
        tried.setdefault(name, []).append(rate)
    fastest_insert, fastest_update = (max(results, key=lambda result: result[0]) for results in (inserts, updates))
    fastest_insert[2].add_to(cpu["insert_baseline"])
    fastest_update[2].add_to(cpu["update_baseline"])
    return fastest_insert[0], fastest_update[0]


def ours(stack, server, brokers: str, topic: str, expected: int, broker_pid: int, cpu: dict[str, list[float]]) -> float:
    process = consumer_process(stack, server.uri, brokers, topic, f"bench-{uuid.uuid4().hex[:6]}")
    meter = CpuMeter({"destination": server.pid, "broker": broker_pid, "consumer": process.popen.pid})
    try:
        process.metrics_url()  # started up: its imports and set-up are not counted
        meter.start()
        rate = rate_through(process, "kafkashake_consumer_events_applied", expected, meter=meter)
    finally:
        process.stop()
    meter.add_to(cpu)
    return rate


def one_round(stack, running, docs: list[dict], ways: tuple[tuple[int, int], ...], latency_ms: float,
              tried: dict, samples: dict[str, list[float]], cpu: dict[str, dict[str, list[float]]]) -> None:
    """The baselines, then ours, each on a fresh destination: inserts, then updates of the documents inserted."""
    insert_base, update_base = fastest_bare(stack, docs, ways, latency_ms, tried, cpu)
    samples["insert_baseline"].append(insert_base)
    samples["update_baseline"].append(update_base)
    ns = "ours.items"
    with fresh_mongo(stack, "ours", latency_ms) as server:
        for kind in ("insert", "update"):
            topic = f"{kind}s-{uuid.uuid4().hex[:6]}"
            publish(running.bootstrap, topic, ns, events(kind, ns, docs))
            samples[kind].append(ours(stack, server, running.bootstrap, topic, len(docs), running.pid, cpu[kind]))
        with MongoClient(server.uri) as client:
            applied = client["ours"]["items"].count_documents({"name": "renamed"})
        assert applied == len(docs), f"{applied} of {len(docs)} updates applied{' (proxied)' if latency_ms else ''}"


def run_on(kind: str, stack, docs: list[dict], rounds: int, latency_ms: float) -> int:
    status = 0
    with running_broker(kind, stack) as running:
        for proxied in (False, True):
            series = ("insert_baseline", "insert", "update_baseline", "update")
            samples: dict[str, list[float]] = {name: [] for name in series}
            cpu: dict[str, dict[str, list[float]]] = {name: {} for name in series}
            tried: dict[str, list[float]] = {}
            for _ in range(rounds):
                one_round(stack, running, docs, DISTANT_WAYS if proxied else DIRECT_WAYS,
                          latency_ms if proxied else 0.0, tried, samples, cpu)
            rates = medians(samples)
            cpu_medians = {name: medians(per_process) for name, per_process in cpu.items()}
            where = f"behind {2 * latency_ms:g} ms round trip" if proxied else "direct"
            name = f"consumer_catchup_{kind}{'_latency' if proxied else ''}.json"
            details = {"broker": BROKER_NAMES[kind], "destination": where, "events": len(docs), "rounds": rounds,
                       "baselines_tried": {k: round(v) for k, v in medians(tried).items()}}
            print(f"{BROKER_NAMES[kind]}, destination {where}; CPU per event, µs (medians): {cpu_medians}")
            for op in ("insert", "update"):
                status |= report(RESULTS / name.replace(".json", f"_{op}s.json"), rates[f"{op}_baseline"],
                                 {op: rates[op]}, "events",
                                 {**details, "baseline": f"fastest bare {op}",
                                  "cpu_us_per_event": {"baseline": cpu_medians[f"{op}_baseline"],
                                                       "ours": cpu_medians[op]}})
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
