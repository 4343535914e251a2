"""End-to-end latency: from the source write to visibility at the destination, at fixed write rates, through real
producer and consumer processes (no delay). Inserts carry their write time; a change stream on the destination
notes when each one arrives.

Reports p50 / p99 per rate and whether the stack sustained it (every document arrived, the writer kept the rate).
Goal: p99 ≤ 1 s at the highest sustained rate. Absolute times here include SecantusDB, a Python server sharing the
machine's 2 cores with everything else.
Usage: python bench/latency.py [--rates 100,1000,5000] [--seconds 15] [--brokers kafka,tansu]
Writes bench/results/latency_<broker>.json."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

from pymongo import MongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import BROKER_NAMES, GROUP_OPTIONS, Process, broker  # noqa: E402
from kafkashake.demo import embedded  # noqa: E402

TICK_S = 0.01
DRAIN_S = 30.0


def write_at_rate(collection, rate: int, seconds: float, first_id: int) -> tuple[int, float]:
    """Insert `rate` documents per second, in small batches every TICK_S; returns (written, achieved rate)."""
    written, started = 0, time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate) - written
        if due > 0:
            now = time.time()
            collection.insert_many([{"_id": first_id + written + i, "t": now} for i in range(due)], ordered=False)
            written += due
        time.sleep(TICK_S)
    return written, written / (time.monotonic() - started)


def watch(collection, seen: dict[int, float], stop: threading.Event) -> None:
    with collection.watch([{"$match": {"operationType": "insert"}}], max_await_time_ms=100) as stream:
        while not stop.is_set():
            change = stream.try_next()
            if change is not None:
                document = change["fullDocument"]
                seen[document["_id"]] = time.time() - document["t"]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(stack, source, destination, brokers: str, rates: list[int], seconds: float) -> list[dict]:
    common = ["--brokers", brokers, "--topic", f"latency-{uuid.uuid4().hex[:6]}"]
    processes = [Process(stack, "producer", "run", "--source-uri", embedded.mongo_uri(source), "--format", "bson",
                         "--name", f"latency-{uuid.uuid4().hex[:6]}", *common),
                 Process(stack, "consumer", "run", "--dest-uri", embedded.mongo_uri(destination), *common,
                         "--group", f"latency-{uuid.uuid4().hex[:6]}", *GROUP_OPTIONS)]
    results = []
    try:
        src = MongoClient(embedded.mongo_uri(source)).bench.items
        dst = MongoClient(embedded.mongo_uri(destination)).bench.items
        src.delete_many({})
        dst.delete_many({})
        src.insert_one({"_id": -1, "t": time.time()})  # warm-up: wait for the group join
        deadline = time.monotonic() + 60
        while dst.find_one({"_id": -1}) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        first_id = 0
        for rate in rates:
            results.append(one_rate(src, dst, rate, seconds, first_id))
            first_id += results[-1]["written"]
    finally:
        for process in processes:
            process.stop()
    return results


def one_rate(src, dst, rate: int, seconds: float, first_id: int) -> dict:
    seen: dict[int, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(dst, seen, stop), daemon=True)
    watcher.start()
    time.sleep(0.5)
    written, achieved = write_at_rate(src, rate, seconds, first_id)
    deadline = time.monotonic() + DRAIN_S
    while len(seen) < written and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    watcher.join(5)
    latencies = [seen[i] for i in range(first_id, first_id + written) if i in seen]
    sustained = len(latencies) == written and achieved >= rate * 0.95
    row = {"rate": rate, "achieved_rate": round(achieved), "written": written, "arrived": len(latencies),
           "p50_ms": round(1000 * statistics.median(latencies)) if latencies else None,
           "p99_ms": round(1000 * percentile(latencies, 0.99)) if latencies else None,
           "sustained": sustained}
    print(f"{rate:>6}/s  achieved {row['achieved_rate']:>6}/s  p50 {row['p50_ms']} ms  "
          f"p99 {row['p99_ms']} ms  {'sustained' if sustained else 'NOT sustained'}", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,1000,5000")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--brokers", default="kafka,tansu")
    args = parser.parse_args()
    rates = [int(rate) for rate in args.rates.split(",")]
    goal_met = True
    with embedded.EmbeddedStack() as stack:
        source, destination = stack.start_mongo("latency-source"), stack.start_mongo("latency-dest")
        for kind in args.brokers.split(","):
            print(BROKER_NAMES[kind])
            with broker(kind, stack) as brokers:
                results = measure(stack, source, destination, brokers, rates, args.seconds)
            sustained = [row for row in results if row["sustained"]]
            met = bool(sustained) and sustained[-1]["p99_ms"] <= 1000
            goal_met &= met
            path = ROOT / "bench" / "results" / f"latency_{kind}.json"
            path.write_text(json.dumps({"date": dt.date.today().isoformat(), "broker": BROKER_NAMES[kind],
                                        "machine": f"{platform.machine()} {platform.node()}",
                                        "seconds": args.seconds, "rates": results,
                                        "goal_p99_1s_at_highest_sustained": met}, indent=2) + "\n")
            print(f"written {path.relative_to(ROOT)}")
    return 0 if goal_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
