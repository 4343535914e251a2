"""End-to-end latency: from the source write to visibility at the destination, at fixed write rates, through real
producer and consumer processes (no delay). Inserts carry their write time; a change stream on the destination
notes when each one arrives.

Reports p50 / p99 per rate and whether the stack sustained it (every document arrived, the writer kept the rate).
Goal: p99 ≤ 1 s at the highest sustained rate. Absolute times here include SecantusDB, a Python server sharing the
machine's 2 cores with everything else.
Usage: python bench/latency.py [--rates 100,1000,5000] [--seconds 15]
Writes bench/results/latency.json."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from pymongo import MongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kafkashake.demo import embedded  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "latency.json"
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,1000,5000")
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    rates = [int(rate) for rate in args.rates.split(",")]
    results = []
    with embedded.EmbeddedStack() as stack:
        source, destination = stack.start_mongo("latency-source"), stack.start_mongo("latency-dest")
        brokers = embedded.brokers(stack.start_kafka())
        common = ["--brokers", brokers, "--topic", "latency", "--metrics-port", "0"]
        processes = [
            subprocess.Popen([sys.executable, "-m", "kafkashake", "producer", "run", "--source-uri",
                              embedded.mongo_uri(source), "--format", "bson", *common],
                             stdout=(stack.workdir / "producer.log").open("wb"), stderr=subprocess.STDOUT),
            subprocess.Popen([sys.executable, "-m", "kafkashake", "consumer", "run", "--dest-uri",
                              embedded.mongo_uri(destination), *common, "-X", "session.timeout.ms=6000",
                              "-X", "heartbeat.interval.ms=500"],
                             stdout=(stack.workdir / "consumer.log").open("wb"), stderr=subprocess.STDOUT),
        ]
        try:
            src = MongoClient(embedded.mongo_uri(source)).bench.items
            dst = MongoClient(embedded.mongo_uri(destination)).bench.items
            src.insert_one({"_id": -1, "t": time.time()})  # warm-up: wait for the group join
            deadline = time.monotonic() + 60
            while dst.find_one({"_id": -1}) is None and time.monotonic() < deadline:
                time.sleep(0.2)
            first_id = 0
            for rate in rates:
                seen: dict[int, float] = {}
                stop = threading.Event()
                watcher = threading.Thread(target=watch, args=(dst, seen, stop), daemon=True)
                watcher.start()
                time.sleep(0.5)
                written, achieved = write_at_rate(src, rate, args.seconds, first_id)
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
                results.append(row)
                print(f"{rate:>6}/s  achieved {row['achieved_rate']:>6}/s  p50 {row['p50_ms']} ms  "
                      f"p99 {row['p99_ms']} ms  {'sustained' if sustained else 'NOT sustained'}", flush=True)
                first_id += written
        finally:
            for process in processes:
                process.terminate()
                process.wait(60)
    sustained = [row for row in results if row["sustained"]]
    goal_met = bool(sustained) and sustained[-1]["p99_ms"] <= 1000
    RESULTS.write_text(json.dumps({"date": dt.date.today().isoformat(),
                                   "machine": f"{platform.machine()} {platform.node()}", "seconds": args.seconds,
                                   "rates": results, "goal_p99_1s_at_highest_sustained": goal_met}, indent=2) + "\n")
    print(f"written {RESULTS.relative_to(ROOT)}")
    return 0 if goal_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
