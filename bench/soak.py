"""Soak: producer and consumer processes under a steady write rate for a long time; their memory must stay flat.

Starts embedded SecantusDB (source, destination) and Tansu, runs `kafkashake producer run` and `consumer run` as
separate processes, writes at --rate operations per second (inserts, updates, deletes) for --minutes, samples
each process's resident memory (VmRSS) every --sample-seconds, then checks the destination equals the source.
"Flat" means the mean RSS of the last third of the run is within 10 % (and 20 MB) of the mean of the first third
after a one-minute warm-up. Writes bench/results/soak.json; exits 1 if memory grew or the data differs.
Usage: python bench/soak.py [--minutes 10] [--rate 200] [--sample-seconds 10]"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from pymongo import DeleteOne, InsertOne, MongoClient, UpdateOne

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kafkashake.demo import embedded, workload  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "soak.json"
WARM_UP_S = 60.0
GROWTH_LIMIT = 0.10
GROWTH_FLOOR_MB = 20.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def steady_writes(db, rate: float, until: float, rng: random.Random) -> int:
    """Inserts, updates and deletes at `rate` per second until `until` (monotonic), sent every 10 ms as one
    ordered bulk write of the operations due."""
    live: list[int] = []
    next_id = 0
    issued = 0
    started = time.monotonic()
    while time.monotonic() < until:
        due = int((time.monotonic() - started) * rate) - issued
        requests: list = []
        for _ in range(max(0, due)):
            roll = rng.random()
            if not live or roll < 0.4:
                requests.append(InsertOne({"_id": next_id, "n": 0, "payload": "x" * rng.randint(50, 500)}))
                live.append(next_id)
                next_id += 1
            elif roll < 0.9:
                requests.append(UpdateOne({"_id": rng.choice(live)}, {"$inc": {"n": 1}, "$set": {"at": issued}}))
            else:
                requests.append(DeleteOne({"_id": live.pop(rng.randrange(len(live)))}))
            issued += 1
        if requests:
            db.items.bulk_write(requests, ordered=True)
        time.sleep(0.01)
    return issued


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    args = parser.parse_args()
    duration = args.minutes * 60

    samples: list[dict[str, float]] = []
    with embedded.EmbeddedStack() as stack:
        source = stack.start_mongo("soak-source")
        destination = stack.start_mongo("soak-dest")
        brokers = embedded.brokers(stack.start_kafka())
        logs = stack.workdir
        common = ["--brokers", brokers, "--topic", "soak", "--metrics-port", "0"]
        producer = subprocess.Popen(
            [sys.executable, "-m", "kafkashake", "producer", "run", "--source-uri", embedded.mongo_uri(source), *common],
            stdout=(logs / "producer.log").open("wb"), stderr=subprocess.STDOUT)
        consumer = subprocess.Popen(
            [sys.executable, "-m", "kafkashake", "consumer", "run", "--dest-uri", embedded.mongo_uri(destination),
             *common, "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500"],
            stdout=(logs / "consumer.log").open("wb"), stderr=subprocess.STDOUT)
        try:
            time.sleep(5)
            started = time.monotonic()
            end = started + duration
            issued: list[int] = []
            writer = threading.Thread(target=lambda: issued.append(
                steady_writes(MongoClient(embedded.mongo_uri(source)).soak, args.rate, end, random.Random(1))))
            writer.start()
            while time.monotonic() < end:
                samples.append({"t": round(time.monotonic() - started, 1), "producer_mb": round(rss_mb(producer.pid), 1),
                                "consumer_mb": round(rss_mb(consumer.pid), 1)})
                print(f"{samples[-1]['t']:>7.0f} s  producer {samples[-1]['producer_mb']:>6.1f} MB  "
                      f"consumer {samples[-1]['consumer_mb']:>6.1f} MB", flush=True)
                time.sleep(args.sample_seconds)
            writer.join()
            deadline = time.monotonic() + 180
            differences = ["not compared"]
            while time.monotonic() < deadline:
                differences = workload.differences(MongoClient(embedded.mongo_uri(source)).soak,
                                                   MongoClient(embedded.mongo_uri(destination)).soak)
                if not differences:
                    break
                time.sleep(2)
        finally:
            for process in (producer, consumer):
                process.terminate()
                process.wait(60)

    verdicts = {}
    for role in ("producer", "consumer"):
        steady = [s[f"{role}_mb"] for s in samples if s["t"] >= min(WARM_UP_S, duration / 3)]
        third = max(1, len(steady) // 3)
        first, last = statistics.mean(steady[:third]), statistics.mean(steady[-third:])
        growth = last - first
        verdicts[role] = {"first_third_mb": round(first, 1), "last_third_mb": round(last, 1),
                          "max_mb": max(s[f"{role}_mb"] for s in samples), "growth_mb": round(growth, 1),
                          "flat": growth <= max(GROWTH_FLOOR_MB, first * GROWTH_LIMIT)}
    report = {"date": dt.date.today().isoformat(), "machine": f"{platform.machine()} {platform.node()}",
              "minutes": args.minutes, "rate_per_s": args.rate, "operations": issued[0] if issued else 0,
              "achieved_rate_per_s": round((issued[0] if issued else 0) / duration),
              "destination_equals_source": not differences, "memory": verdicts, "samples": samples}
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    for role, verdict in verdicts.items():
        print(f"{role}: {verdict['first_third_mb']} MB → {verdict['last_third_mb']} MB (max {verdict['max_mb']} MB): "
              f"{'flat' if verdict['flat'] else 'GROWING'}")
    print(f"{report['operations']} operations ({report['achieved_rate_per_s']}/s); destination equals source: "
          f"{not differences}; written {RESULTS.relative_to(ROOT)}")
    return 0 if not differences and all(v["flat"] for v in verdicts.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
