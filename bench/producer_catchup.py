"""Producer catch-up: the real `kafkashake producer run` publishes a 100k-entry oplog backlog in each format, against
the fastest bare reader of the same oplog entries, on the same server in the same run, on Apache Kafka and on Tansu.

Baseline: pymongo reading the oplog as raw BSON, each way a reader would: a `ts` range, no filter (the server's
oplog holds only this backlog), by namespace, and a tailable await cursor from the start position, each with
`batch_size` 1,000 and 10,000; the fastest of them in each round. Ours: the producer process started at the backlog's
first position, timed through its /metrics from the first entry published to the last.

Ours keeps its checkpoint on a server of its own (--checkpoint-uri), so the source serves the same oplog read as the
baseline's and nothing else: the test server makes a write wait for the oplog read it is serving (a checkpoint
write waited 2.4 s, the rest of a 100k-entry read), which a mongod does not. The default deployment, checkpoint on
the source, is measured too (`bson, checkpoint on source`), informational. One unmeasured pass warms the broker up
first, as a broker that has run for a while is (a fresh JVM spent half a core more compiling during the first pass).

Each run of ours also records the CPU per entry that the source server, the broker and the producer used from the
moment the producer's /metrics is up (after its start-up, before it reads) to the last entry published
(`cpu_us_per_entry`, medians; the batches read before the first entry was published count too): on two cores
their sum bounds the rate.

Ratio = ours / the fastest baseline. Goals: bson ≥ 0.8, json and raw ≥ 0.7.
Usage: python bench/producer_catchup.py [--entries 100000] [--rounds 3] [--brokers kafka,tansu]
Writes bench/results/producer_catchup_<broker>.json; flags ratios >10 % below the previous run's."""
from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import CursorType, MongoClient, UpdateOne

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import BROKER_NAMES, CpuMeter, Process, medians, rate_through, running_broker  # noqa: E402
from bench.report import report  # noqa: E402
from kafkashake.demo import embedded  # noqa: E402
from kafkashake.oplog import position  # noqa: E402

RESULTS = ROOT / "bench" / "results"
RAW = CodecOptions(document_class=RawBSONDocument)
FORMATS = ("bson", "json", "raw")
ON_SOURCE = "bson, checkpoint on source"


def seed(client: MongoClient, entries: int) -> None:
    """`entries` oplog entries: inserts, then updates of those documents (two-thirds inserts)."""
    inserts = entries * 2 // 3
    documents = [{"_id": i, "n": i, "name": f"user{i}", "tags": ["a", "b"], "profile": {"score": i / 7}}
                 for i in range(inserts)]
    for start in range(0, inserts, 10_000):
        client.bench.items.insert_many(documents[start:start + 10_000])
    updates = [UpdateOne({"_id": d["_id"]}, {"$set": {"n": -1}}) for d in documents[: entries - inserts]]
    for start in range(0, len(updates), 10_000):
        client.bench.items.bulk_write(updates[start:start + 10_000])


def bare_reads(client: MongoClient, after, expected: int) -> dict[str, float]:
    """Entries/s of each way of reading the backlog; every way must see all of it."""
    oplog = client.local.get_collection("oplog.rs", codec_options=RAW)
    ways = {
        "ts range": lambda size: oplog.find({"ts": {"$gt": after}}, batch_size=size),
        "no filter": lambda size: oplog.find({}, batch_size=size),
        "by namespace": lambda size: oplog.find({"ns": "bench.items"}, batch_size=size),
        "tailable": lambda size: oplog.find({"ts": {"$gt": after}}, batch_size=size,
                                            cursor_type=CursorType.TAILABLE_AWAIT, oplog_replay=True),
    }
    rates = {}
    for name, open_cursor in ways.items():
        for size in (1_000, 10_000):
            cursor = open_cursor(size)
            started, count = time.perf_counter(), 0
            for entry in cursor:
                count += entry["ns"] == "bench.items"
                if count >= expected:
                    break
            elapsed = time.perf_counter() - started
            cursor.close()
            if count >= expected:
                rates[f"{name}, batch_size {size}"] = count / elapsed
    return rates


def ours(stack, uri: str, brokers: str, message_format: str, after, expected: int, checkpoint_uri: str,
         cpu: dict[str, list[float]], watched: dict[str, int]) -> float:
    """The producer's rate; appends the CPU per entry of it and of the `watched` processes to `cpu`."""
    process = Process(stack, "producer", "run", "--source-uri", uri, "--brokers", brokers,
                      "--topic", f"catchup-{uuid.uuid4().hex[:6]}", "--name", f"bench-{uuid.uuid4().hex[:6]}",
                      "--format", message_format, "--start-position", position.text(after),
                      "--checkpoint-uri", checkpoint_uri, "--checkpoint-db", "kafkashake_bench")
    meter = CpuMeter({**watched, "producer": process.popen.pid})
    try:
        process.metrics_url()  # started up: its imports and set-up are not counted
        meter.start()
        rate = rate_through(process, "kafkashake_producer_events_published", expected, meter=meter)
    finally:
        process.stop()
    meter.add_to(cpu)
    return rate


def run_on(kind: str, stack, uri: str, source_pid: int, client: MongoClient, after, expected: int, rounds: int,
           checkpoint_uri: str) -> int:
    samples: dict[str, list[float]] = {"baseline": [], **{f: [] for f in FORMATS}, ON_SOURCE: []}
    cpu: dict[str, dict[str, list[float]]] = {name: {} for name in samples if name != "baseline"}
    variants: dict[str, list[float]] = {}
    with running_broker(kind, stack) as running:
        brokers, watched = running.bootstrap, {"source": source_pid, "broker": running.pid}
        ours(stack, uri, brokers, "bson", after, expected, checkpoint_uri, {}, watched)
        for _ in range(rounds):
            reads = bare_reads(client, after, expected)
            for name, rate in reads.items():
                variants.setdefault(name, []).append(rate)
            samples["baseline"].append(max(reads.values()))
            for message_format in FORMATS:
                samples[message_format].append(ours(stack, uri, brokers, message_format, after, expected,
                                                    checkpoint_uri, cpu[message_format], watched))
            samples[ON_SOURCE].append(ours(stack, uri, brokers, "bson", after, expected, uri, cpu[ON_SOURCE], watched))
    rates = medians(samples)
    tried = {name: round(rate) for name, rate in medians(variants).items()}
    cpu_medians = {series: medians(per_process) for series, per_process in cpu.items()}
    print(f"{BROKER_NAMES[kind]}: baseline = fastest of {tried}")
    print(f"CPU per entry, µs (medians): {cpu_medians}")
    return report(RESULTS / f"producer_catchup_{kind}.json", rates.pop("baseline"), rates, "entries",
                  {"broker": BROKER_NAMES[kind], "entries": expected, "rounds": rounds,
                   "baseline": "fastest bare raw-BSON oplog read per round", "baselines_tried": tried,
                   "checkpoint": "on a server of its own; 'bson, checkpoint on source' on the source",
                   "cpu_us_per_entry": cpu_medians},
                  informational=[ON_SOURCE])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--brokers", default="kafka,tansu")
    args = parser.parse_args()
    status = 0
    with embedded.EmbeddedStack() as stack:
        source = stack.start_mongo("catchup-source", "--oplog-max-entries", str(args.entries * 4))
        uri = embedded.mongo_uri(source)
        client = MongoClient(uri)
        after = client.local["oplog.rs"].find_one(sort=[("$natural", -1)])["ts"]
        seed(client, args.entries)
        checkpoint_uri = embedded.mongo_uri(stack.start_mongo("catchup-checkpoints"))
        for kind in args.brokers.split(","):
            status |= run_on(kind, stack, uri, source.process.pid, client, after, args.entries, args.rounds,
                             checkpoint_uri)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
