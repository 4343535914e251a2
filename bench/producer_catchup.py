"""Producer catch-up: publish an oplog backlog in each format with the real producer loop (in process), against a
bare pymongo scan of the same oplog entries as raw BSON, on the same server in the same run.

Ratio = our entries/s divided by the scan's; goal ≥ 0.8. Timed from Kafka's first acknowledgement to its last
(connecting, loading the checkpoint and creating the topic before it are not catch-up work).
Usage: python bench/producer_catchup.py [--entries 100000] [--rounds 3]
Starts embedded SecantusDB and Tansu. Writes bench/results/producer_catchup.json; flags ratios >10 % below the
previous run's."""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient, UpdateOne

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.in_process import rate_through_backlog  # noqa: E402
from bench.report import report  # noqa: E402
from kafkashake.demo import embedded  # noqa: E402
from kafkashake.oplog import position  # noqa: E402
from kafkashake.producer.publisher import Encoding  # noqa: E402
from kafkashake.producer.run import ProducerRun  # noqa: E402
from kafkashake.producer.settings import ProducerSettings  # noqa: E402
from kafkashake.runtime.shutdown import ShutdownFlag  # noqa: E402
from kafkashake.schemas.codec import MessageFormat  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "producer_catchup.json"
RAW = CodecOptions(document_class=RawBSONDocument)


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


def bare_scan(client: MongoClient, after, until) -> tuple[float, int]:
    oplog = client.local.get_collection("oplog.rs", codec_options=RAW)
    started = time.perf_counter()
    count = sum(1 for _ in oplog.find({"ts": {"$gt": after, "$lte": until}}, batch_size=10_000))
    return count / (time.perf_counter() - started), count


def ours(uri: str, brokers: str, message_format: MessageFormat, after, expected: int) -> float:
    settings = ProducerSettings(source_uri=uri, brokers=brokers, topic=f"catchup-{uuid.uuid4().hex[:6]}",
                                name=f"bench-{uuid.uuid4().hex[:6]}", encoding=Encoding(message_format),
                                start_position=position.describe(after).split(" ")[0],
                                checkpoint_db="kafkashake_bench", metrics_port=0)
    return rate_through_backlog(ProducerRun(settings, ShutdownFlag()), "kafkashake_producer_events_published", expected)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {"baseline": [], **{f.value: [] for f in MessageFormat}}
    with embedded.EmbeddedStack() as stack:
        source = stack.start_mongo("catchup-source", "--oplog-max-entries", str(args.entries * 4))
        uri = embedded.mongo_uri(source)
        client = MongoClient(uri)
        brokers = embedded.brokers(stack.start_kafka())
        after = client.local["oplog.rs"].find_one(sort=[("$natural", -1)])["ts"]
        seed(client, args.entries)
        until = client.local["oplog.rs"].find_one(sort=[("$natural", -1)])["ts"]
        for _ in range(args.rounds):
            rate, count = bare_scan(client, after, until)
            samples["baseline"].append(rate)
            for message_format in MessageFormat:
                samples[message_format.value].append(ours(uri, brokers, message_format, after, count))
    baseline = statistics.median(samples["baseline"])
    rates = {f.value: statistics.median(samples[f.value]) for f in MessageFormat}
    return report(RESULTS, baseline, rates, "entries", {"entries": args.entries, "rounds": args.rounds})


if __name__ == "__main__":
    raise SystemExit(main())
