"""Consumer memory under a held backlog, and scale-out.

memory: the consumer process's RSS while `--target-delay` holds a backlog of --backlog events (default 1M) in
Kafka. Goal: flat and under 300 MB (the backlog waits in Kafka, not in the consumer).
scale-out: events applied per second (their /metrics, first event to last) by one consumer process, then by two in
one group, each on a fresh destination, of --events inserts from an 8-partition topic; the ratio is two's rate over
one's.
Usage: python bench/consumer_scale.py [--backlog 1000000] [--events 100000] [--hold-seconds 60] [--brokers kafka,tansu]
Writes bench/results/consumer_scale_<broker>.json."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
import uuid
from pathlib import Path

import bson
from bson.timestamp import Timestamp
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.consumer_catchup import documents, events, publish  # noqa: E402
from bench.soak import rss_mb  # noqa: E402
from bench.harness import BROKER_NAMES, broker, consumer_process, fresh_mongo, rate_through  # noqa: E402
from kafkashake.demo import embedded  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "consumer_scale.json"
MEMORY_GOAL_MB = 300.0


def held_backlog_memory(stack, brokers: str, backlog: int, hold_s: float) -> dict:
    topic = f"held-{uuid.uuid4().hex[:6]}"
    now = Timestamp(int(time.time()), 0)
    encoded = [(document, bson.encode({"op": "i", "ns": "held.items", "o": document,
                                       "ts": Timestamp(now.time, i + 1)}))
               for i, document in enumerate(documents(backlog))]
    publish(brokers, topic, "held.items", encoded)
    del encoded
    with fresh_mongo(stack, "held-dest") as destination:
        process = consumer_process(stack, destination.uri, brokers, topic, f"held-{uuid.uuid4().hex[:6]}",
                           "--target-delay", "3600")
        samples = []
        try:
            process.metrics_url()
            for _ in range(max(2, round(hold_s / 5))):
                time.sleep(5)  # sampling the RSS over the hold, not waiting for an event
                samples.append(round(rss_mb(process.popen.pid), 1))
                print(f"  held backlog: consumer RSS {samples[-1]} MB", flush=True)
            consumed = process.metric("kafkashake_consumer_messages_consumed")
        finally:
            process.stop()
        applied = MongoClient(destination.uri).held.items.estimated_document_count()
    half = len(samples) // 2
    flat = max(samples[half:]) <= max(samples[:half]) * 1.1 + 5
    return {"backlog": backlog, "samples_mb": samples, "max_mb": max(samples), "consumed_while_held": round(consumed),
            "applied_while_held": applied, "flat": flat, "under_goal": max(samples) < MEMORY_GOAL_MB}


def apply_rate(stack, brokers: str, topic: str, ns: str, expected: int, instances: int) -> tuple[float, list[int]]:
    """Events applied per second by `instances` consumers of one group on a fresh destination, timed through their
    /metrics from the first event applied to the last, and how many each applied."""
    group = f"scale-{uuid.uuid4().hex[:6]}"
    with fresh_mongo(stack, "scale-dest") as destination:
        processes = [consumer_process(stack, destination.uri, brokers, topic, group) for _ in range(instances)]
        try:
            rate = rate_through(processes, "kafkashake_consumer_events_applied", expected)
            shares = [round(process.metric("kafkashake_consumer_events_applied")) for process in processes]
        finally:
            for process in processes:
                process.stop()
        db, coll = ns.split(".")
        held = MongoClient(destination.uri)[db][coll].count_documents({})
        if held != expected:
            raise RuntimeError(f"{instances} consumer(s) left {held} of {expected} documents at the destination")
    if min(shares) < expected / instances / 4:
        raise RuntimeError(f"the consumers of one group applied {shares} of {expected} events: one barely worked")
    return rate, shares


def run_on(kind: str, stack, args: argparse.Namespace) -> int:
    with broker(kind, stack) as brokers:
        rates, shares = {}, {}
        for instances in (1, 2):
            ns = f"scale{instances}{kind}.items"
            topic = f"scale-{uuid.uuid4().hex[:6]}"
            publish(brokers, topic, ns, events("insert", ns, documents(args.events)))
            rates[instances], shares[instances] = apply_rate(stack, brokers, topic, ns, args.events, instances)
            print(f"{instances} consumer(s): {rates[instances]:.0f} events/s, applied {shares[instances]}", flush=True)
        memory = held_backlog_memory(stack, brokers, args.backlog, args.hold_seconds)
    report = {"date": dt.date.today().isoformat(), "broker": BROKER_NAMES[kind],
              "machine": f"{platform.machine()} {platform.node()}",
              "scale_out": {"events": args.events, "one_per_s": round(rates[1]), "two_per_s": round(rates[2]),
                            "ratio": round(rates[2] / rates[1], 2), "two_applied_each": shares[2]},
              "memory": memory}
    path = RESULTS.with_name(f"consumer_scale_{kind}.json")
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{BROKER_NAMES[kind]}: scale-out ratio (two / one): {rates[2] / rates[1]:.2f}")
    print(f"held backlog of {args.backlog}: max RSS {memory['max_mb']} MB, flat: {memory['flat']}, "
          f"consumed while held: {memory['consumed_while_held']}, applied while held: {memory['applied_while_held']}")
    return 0 if memory["flat"] and memory["under_goal"] and memory["applied_while_held"] == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--hold-seconds", type=float, default=60.0)
    parser.add_argument("--brokers", default="kafka,tansu")
    args = parser.parse_args()
    status = 0
    with embedded.EmbeddedStack() as stack:
        for kind in args.brokers.split(","):
            status |= run_on(kind, stack, args)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
