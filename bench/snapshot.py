"""Snapshot benchmark: the initial copy (plan, parallel range readers, encoder, Kafka producer, acknowledged
progress) against a bare pymongo `find()` of the same collections, on the same servers in the same run.

Ratio = our documents/s divided by the baseline's; higher is better, 1.0 means copying to Kafka is as fast as
only reading. The baseline reads raw BSON (`RawBSONDocument`, the cheapest read pymongo offers); the same scan
decoding to dicts is reported too, for scale.
Usage: python bench/snapshot.py [--documents 100000] [--collections 4] [--rounds 3] [--parallel 1]
Parallel readers only pay off when the server has cores of its own; here SecantusDB (Python) shares 2 cores.
Starts embedded SecantusDB and Tansu. Writes bench/results/snapshot.json and flags a ratio more than 10 % below
the previous run's."""
from __future__ import annotations

import argparse
import datetime as dt
import statistics
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

from bench.report import report  # noqa: E402
from kafkashake.demo import embedded  # noqa: E402
from kafkashake.oplog.namespaces import NamespaceFilter  # noqa: E402
from kafkashake.producer.metrics import ProducerMetrics  # noqa: E402
from kafkashake.producer.publisher import PRODUCER_DEFAULTS, Encoding, Publisher  # noqa: E402
from kafkashake.runtime.kafka_topics import TopicDirectory  # noqa: E402
from kafkashake.producer.snapshot import SnapshotCopier, SnapshotSettings  # noqa: E402
from kafkashake.producer.snapshot_plan import list_collections, split  # noqa: E402
from kafkashake.producer.snapshot_state import SnapshotState, SnapshotStore  # noqa: E402
from kafkashake.runtime.shutdown import ShutdownFlag  # noqa: E402
from kafkashake.schemas.codec import MessageFormat  # noqa: E402
from kafkashake.schemas.partitioning import PartitionBy  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "snapshot.json"
DATABASE = "bench"
PARTITIONS = 8
RAW = CodecOptions(document_class=RawBSONDocument)


def seed(client: MongoClient, documents: int, collections: int) -> None:
    wall = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    per_collection = documents // collections
    for c in range(collections):
        batch = [{"_id": ObjectId(), "n": i, "name": f"user{i}", "tags": ["a", "b", "c"],
                  "profile": {"score": i / 7, "city": "Oslo", "since": wall}} for i in range(per_collection)]
        for start in range(0, per_collection, 10_000):
            client[DATABASE][f"c{c}"].insert_many(batch[start:start + 10_000])


def bare_find(client: MongoClient, codec_options: CodecOptions | None = None) -> float:
    database = client.get_database(DATABASE, codec_options=codec_options) if codec_options else client[DATABASE]
    started = time.perf_counter()
    count = sum(sum(1 for _ in database[name].find()) for name in database.list_collection_names())
    return count / (time.perf_counter() - started)


def ours(client: MongoClient, brokers: str, message_format: MessageFormat, settings: SnapshotSettings) -> float:
    topic = f"bench-snapshot-{message_format.value}-{uuid.uuid4().hex[:6]}"
    config = {"bootstrap.servers": brokers, **PRODUCER_DEFAULTS}
    directory = TopicDirectory(config, PARTITIONS, -1)
    directory.partitions(topic)
    publisher = Publisher(config, topic, "bench", Encoding(message_format), PartitionBy.ID, directory)
    store = SnapshotStore(client["kafkashake_bench"]["snapshot"], topic)
    started = time.perf_counter()
    collections = list_collections(client, NamespaceFilter(white=(DATABASE,)), frozenset({"kafkashake_bench"}))
    for collection in collections:
        split(client, collection, settings.split_documents)
    capture = client.admin.command("ping")["$clusterTime"]["clusterTime"]
    state = SnapshotState(capture, dt.datetime.now(tz=dt.timezone.utc), collections)
    copier = SnapshotCopier(client, publisher, store, state, settings, ProducerMetrics("oplog", message_format.value),
                            ShutdownFlag(), 1.0, lambda action, _what: action(), lambda: None)
    copier.run()
    copier.complete(capture)
    elapsed = time.perf_counter() - started
    assert state.copied == sum(c.estimated for c in collections), (state.copied, state.estimated)
    return state.copied / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--collections", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=1)
    args = parser.parse_args()
    settings = SnapshotSettings(parallel=args.parallel, split_documents=max(1, args.documents // 8))

    series = ["find_dict", *(f.value for f in MessageFormat)]
    samples: dict[str, list[float]] = {"baseline": [], **{name: [] for name in series}}
    with embedded.EmbeddedStack() as stack:
        client = MongoClient(embedded.mongo_uri(stack.start_mongo("bench-source")))
        brokers = embedded.brokers(stack.start_kafka())
        seed(client, args.documents, args.collections)
        for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits every series alike
            samples["baseline"].append(bare_find(client, RAW))
            samples["find_dict"].append(bare_find(client))
            for message_format in MessageFormat:
                samples[message_format.value].append(ours(client, brokers, message_format, settings))

    baseline = statistics.median(samples["baseline"])
    rates = {name: statistics.median(samples[name]) for name in series}
    details = {"documents": args.documents, "collections": args.collections, "rounds": args.rounds,
               "parallel": args.parallel}
    return report(RESULTS, baseline, rates, "documents", details, informational=["find_dict"])

if __name__ == "__main__":
    raise SystemExit(main())
