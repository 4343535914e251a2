"""Initial copy: the real `kafkashake producer run --sync-mode all` copies 100k documents in 4 collections to Kafka,
against the fastest bare read of the same collections, on the same server in the same run, on Apache Kafka and Tansu.

Baseline: pymongo `find()` of every collection as raw BSON (`RawBSONDocument`, the cheapest read pymongo offers),
with the default batches and with `batch_size` 1,000 and 10,000; the fastest in each round. The same scan decoding
to dicts is reported for scale. Ours: the producer process, timed through its /metrics
(`kafkashake_producer_snapshot_copied_documents`) from the first document acknowledged to the last.
Ratio = ours / the fastest baseline; 1.0 would mean copying to Kafka is as fast as only reading.
Usage: python bench/snapshot.py [--documents 100000] [--collections 4] [--rounds 3] [--brokers kafka,tansu]
Writes bench/results/snapshot_<broker>.json and flags a ratio more than 10 % below the previous run's."""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import uuid
from pathlib import Path

from bson import ObjectId
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import BROKER_NAMES, Process, broker, medians, rate_through  # noqa: E402
from bench.report import report  # noqa: E402
from kafkashake.demo import embedded  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DATABASE = "bench"
RAW = CodecOptions(document_class=RawBSONDocument)
FORMATS = ("raw", "bson", "json")


def seed(client: MongoClient, documents: int, collections: int) -> None:
    wall = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    per_collection = documents // collections
    for c in range(collections):
        batch = [{"_id": ObjectId(), "n": i, "name": f"user{i}", "tags": ["a", "b", "c"],
                  "profile": {"score": i / 7, "city": "Oslo", "since": wall}} for i in range(per_collection)]
        for start in range(0, per_collection, 10_000):
            client[DATABASE][f"c{c}"].insert_many(batch[start:start + 10_000])


def bare_find(client: MongoClient, codec_options: CodecOptions | None = None, batch_size: int = 0) -> float:
    database = client.get_database(DATABASE, codec_options=codec_options) if codec_options else client[DATABASE]
    started = time.perf_counter()
    count = sum(sum(1 for _ in database[name].find(batch_size=batch_size)) for name in database.list_collection_names())
    return count / (time.perf_counter() - started)


def ours(stack, uri: str, brokers: str, message_format: str, expected: int) -> float:
    process = Process(stack, "producer", "run", "--source-uri", uri, "--brokers", brokers, "--sync-mode", "all",
                      "--topic", f"snapshot-{uuid.uuid4().hex[:6]}", "--name", f"bench-{uuid.uuid4().hex[:6]}",
                      "--format", message_format, "--checkpoint-db", "kafkashake_bench",
                      "--filter-namespace-white", DATABASE)
    try:
        return rate_through(process, "kafkashake_producer_snapshot_copied_documents", expected)
    finally:
        process.stop()


def run_on(kind: str, stack, uri: str, client: MongoClient, documents: int, rounds: int) -> int:
    samples: dict[str, list[float]] = {"baseline": [], "find_dict": [], **{f: [] for f in FORMATS}}
    with broker(kind, stack) as brokers:
        for _ in range(rounds):  # interleaved, so drift on a shared machine hits every series alike
            samples["baseline"].append(max(bare_find(client, RAW, size) for size in (0, 1_000, 10_000)))
            samples["find_dict"].append(bare_find(client))
            for message_format in FORMATS:
                samples[message_format].append(ours(stack, uri, brokers, message_format, documents))
    rates = medians(samples)
    return report(RESULTS / f"snapshot_{kind}.json", rates.pop("baseline"), rates, "documents",
                  {"broker": BROKER_NAMES[kind], "documents": documents, "rounds": rounds,
                   "baseline": "fastest raw-BSON find() of default, 1,000 and 10,000 batches"},
                  informational=["find_dict"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--collections", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--brokers", default="kafka,tansu")
    args = parser.parse_args()
    status = 0
    with embedded.EmbeddedStack() as stack:
        uri = embedded.mongo_uri(stack.start_mongo("bench-source"))
        client = MongoClient(uri)
        seed(client, args.documents, args.collections)
        for kind in args.brokers.split(","):
            status |= run_on(kind, stack, uri, client, args.documents, args.rounds)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
