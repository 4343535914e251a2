"""Full sync end to end: existing data and indexes copied through Kafka, then streaming with no gap."""
from __future__ import annotations

import re
import threading
import time
import urllib.request
from typing import Any

import bson
import pytest
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, MongoClient

from conftest import client, consumer_args, discard, endpoint_url, producer_args, unique, wait_until
from kafkashake.demo import workload
from kafkashake.schemas import headers
from test_pipeline import read_topic, wait_equal

pytestmark = pytest.mark.e2e

INDEX_FIELDS_COMPARED = ("key", "name", "unique", "partialFilterExpression", "expireAfterSeconds", "sparse")


def seed(db, documents: int) -> None:
    """Existing data of several `_id` types, with unique, partial, TTL and compound indexes, a capped
    collection, an empty collection and a view."""
    kinds = [lambda i: i, lambda i: f"key-{i:06d}", lambda i: ObjectId(), lambda i: float(i) + 0.5]
    # A few sub-document _ids: SecantusDB scans the whole collection to match one (mongod uses the _id index).
    db.accounts.insert_many([{"_id": {"k": i} if i % 500 == 3 else kinds[i % len(kinds)](i), "n": i, "email": f"u{i}@x", "tags": ["a", i % 7],
                            "nested": {"deep": {"v": i}}} for i in range(documents)])
    db.accounts.create_index([("email", ASCENDING)], unique=True)
    db.accounts.create_index([("n", ASCENDING), ("email", DESCENDING)], name="n_email")
    db.accounts.create_index([("nested.deep.v", ASCENDING)], partialFilterExpression={"n": {"$gt": 100}})
    db.sessions.insert_many([{"_id": i, "at": i} for i in range(50)])
    db.sessions.create_index([("at", ASCENDING)], expireAfterSeconds=3600)
    db.create_collection("log", capped=True, size=1 << 20)
    db.log.insert_many([{"_id": i, "line": f"l{i}"} for i in range(20)])
    db.create_collection("empty")
    db.command("create", "big_orders", viewOn="accounts", pipeline=[{"$match": {"n": {"$gt": 10}}}])


def index_specs(db) -> dict[str, list[dict]]:
    specs = {}
    for name in sorted(db.list_collection_names()):
        if name.startswith("system.") or db[name].options().get("viewOn"):
            continue
        specs[name] = sorted(
            ({field: spec[field] for field in INDEX_FIELDS_COMPARED if field in spec} for spec in db[name].list_indexes()),
            key=lambda spec: spec["name"])
    return specs


def copy_state(source, task: str = "kafkashake") -> dict:
    return client(source)["kafkashake"]["snapshot"].find_one({"_id": task}) or {}


def copied(state: dict) -> int:
    return sum(r.get("copied", 0) for c in state.get("collections", []) for r in c["ranges"])


class _StopWriting(Exception):
    pass


def keep_writing(db, stop: threading.Event) -> None:
    """The mixed workload, with updates, deletes and inserts on the copied collection, until told to stop."""
    rounds = [0]

    def between(_issued: int) -> None:
        round_ = rounds[0] = rounds[0] + 1
        db.accounts.update_many({"n": {"$mod": [50, round_ % 50]}}, {"$inc": {"n": 100000}, "$set": {"touched": round_}})
        db.accounts.delete_one({"n": {"$mod": [50, (round_ + 7) % 50]}})
        db.accounts.insert_one({"_id": f"during-{round_}", "n": -round_, "email": f"during{round_}@x"})
        if stop.is_set():
            raise _StopWriting

    try:
        workload.run_workload(db, 10**7, on_progress=between)
    except _StopWriting:
        pass


@pytest.mark.parametrize("message_format, index_creation, fetch_method",
                         [("raw", "before", "oplog"), ("json", "after", "change_stream")])
def test_copy_with_writes_during_it_converges_with_indexes(source, destination, brokers, cli, message_format: str,
                                                           index_creation: str, fetch_method: str) -> None:
    src = client(source)["shop"]
    seed(src, 6000)
    topic = unique("full")
    stop = threading.Event()
    writer = threading.Thread(target=keep_writing, args=(src, stop), daemon=True)
    writer.start()
    producer = cli(*producer_args(source, brokers, topic, "--sync-mode", "all", "--format", message_format,
                                  "--fetch-method", fetch_method,
                                  "--index-creation", index_creation, "--snapshot-split-docs", "1500",
                                  "--snapshot-parallel", "3", "--snapshot-batch-size", "200"), name="producer").start()
    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    try:
        wait_until(lambda: copy_state(source).get("status") == "complete" or not producer.running, 120,
                   "copy to complete")
        assert producer.running, producer.log()
        time.sleep(1.0)  # and some writes after the copy
    finally:
        stop.set()
        writer.join(30)
    state = copy_state(source)
    assert len(state["collections"]) >= 5 and any(len(c["ranges"]) > 1 for c in state["collections"])
    assert "copy progress" in producer.log() or "copy complete" in producer.log()
    wait_equal(source, destination, "shop", timeout=180)
    dst = client(destination)["shop"]
    assert index_specs(dst) == index_specs(src)
    assert dst.log.options().get("capped") is True
    assert dst.big_orders.options().get("viewOn") == "accounts"
    assert "empty" in dst.list_collection_names()
    assert producer.terminate() == 0, producer.log()
    assert consumer.terminate() == 0, consumer.log()
    # The overlap of the copy and the stream is not reported as conflicts.
    assert "conflict:" not in consumer.log(), consumer.log()[-3000:]


def document_ids(brokers: str, topic: str) -> list:
    """The _id of every snapshot document event in the topic (bson format)."""
    ids = []
    for message in read_topic(brokers, topic):
        message_headers = headers.as_dict(message.headers())
        assert message_headers.get(headers.SNAPSHOT) == "true"
        if message_headers.get(headers.OPERATION) == "i":
            ids.append(bson.decode(message.value())["o"]["_id"])
    return ids


def slow_copy_reads(mongo: MongoClient, block_ms: int | None) -> None:
    """Hold each of the producer's getMore commands for `block_ms` (None: stop), so a copy lasts seconds however fast
    the machine is."""
    mode: Any = "off" if block_ms is None else "alwaysOn"
    mongo.admin.command("configureFailPoint", "failCommand", mode=mode,
                        data={"failCommands": ["getMore"], "appName": "kafkashake-producer", "blockConnection": True,
                              "blockTimeMS": block_ms or 0})


def test_kill9_mid_copy_resumes_instead_of_recopying(stack, destination, brokers, cli) -> None:
    total = 24000
    source = stack.start_mongo(unique("slow-source"), "--enable-test-commands")
    src = client(source)["bulk"]
    for start in range(0, total, 8000):
        src.items.insert_many([{"_id": i, "payload": "x" * 64, "i": i} for i in range(start, start + 8000)])
    topic = unique("resume")
    args = producer_args(source, brokers, topic, "--sync-mode", "full", "--format", "bson",
                         "--snapshot-split-docs", "6000", "--snapshot-parallel", "2", "--snapshot-batch-size", "200")
    slow_copy_reads(client(source), 100)  # about 6 s for the whole copy
    first = cli(*args, name="producer").start()
    wait_until(lambda: copied(copy_state(source)) >= 2000 or not first.running, 120, "a good part of the copy",
               interval=0.05)
    assert first.running, "the copy finished before it could be interrupted: " + first.log()[-2000:]
    first.kill9()
    saved = copied(copy_state(source))
    assert 0 < saved < total
    before_restart = len(document_ids(brokers, topic))
    slow_copy_reads(client(source), None)

    second = cli(*args, name="producer-again").start()
    assert second.wait(180) == 0, second.log()
    assert "resuming the copy" in second.log()
    assert copy_state(source)["status"] == "complete"

    ids = document_ids(brokers, topic)
    assert set(ids) == set(range(total))
    # The restart publishes exactly the documents after the saved progress; a recopy would publish all of them.
    assert len(ids) - before_restart == total - saved
    print(f"kill -9 after {before_restart} document events ({saved} acknowledged and saved); the restart published "
          f"{len(ids) - before_restart}; {len(ids)} in all for {total} documents")

    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    wait_equal(source, destination, "bulk", timeout=180)
    assert consumer.terminate() == 0
    discard(source)


def test_oplog_too_small_for_the_copy_exits_3_with_sizing_advice(stack, brokers, cli) -> None:
    small = stack.start_mongo(unique("small-oplog"), "--oplog-max-entries", "40", "--enable-test-commands")
    try:
        src: MongoClient = client(small)
        src["shop"]["items"].insert_many([{"_id": i} for i in range(20000)])
        topic = unique("too-small")
        args = producer_args(small, brokers, topic, "--sync-mode", "all", "--snapshot-batch-size", "100",
                             "--snapshot-parallel", "1")
        slow_copy_reads(src, 100)  # 200 reads of 100 ms: the copy outlasts its first progress save on any machine
        producer = cli(*args, name="producer").start()
        wait_until(lambda: copied(copy_state(small)) > 0 or not producer.running, 60, "the copy to start", interval=0.05)
        producer.kill9()
        slow_copy_reads(src, None)
        assert copy_state(small)["status"] != "complete", "the copy finished before it could be interrupted"
        # Writes while the copy is interrupted roll the captured position out of the oplog
        # (SecantusDB enforces --oplog-max-entries every 1000 oplog writes).
        src["shop"]["other"].insert_many([{"_id": i} for i in range(1200)])
        restarted = cli(*args, name="producer-again").start()
        assert restarted.wait(60) == 3, restarted.log()
        log = restarted.log()
        assert "oplog too small for a copy this long" in log and "oplogMinRetentionHours" in log, log
    finally:
        small.stop()


def test_drop_existing_removes_destination_only_documents_before_the_copy(source, destination, brokers, cli) -> None:
    src, dst = client(source)["keep"], client(destination)["keep"]
    src.items.insert_many([{"_id": i, "v": i} for i in range(300)])
    dst.items.insert_many([{"_id": i, "v": "stale"} for i in range(250, 400)])  # overlaps, and extra documents
    dst.untouched.insert_one({"_id": 1})  # not in the source: not dropped
    topic = unique("drop")
    producer = cli(*producer_args(source, brokers, topic, "--sync-mode", "full"), name="producer").start()
    assert producer.wait(120) == 0, producer.log()
    consumer = cli(*consumer_args(destination, brokers, topic, "--drop-existing"), name="consumer").start()
    wait_until(lambda: sorted(d["_id"] for d in dst.items.find()) == list(range(300)), 90, "the copy alone")
    assert list(dst.items.find({"v": "stale"})) == [] and dst.untouched.count_documents({}) == 1
    assert "--drop-existing is on (it is off by default)" in consumer.log()
    assert consumer.terminate() == 0


def test_without_drop_existing_a_copy_inserts_or_replaces_and_leaves_other_documents(source, destination, brokers,
                                                                                     cli) -> None:
    src, dst = client(source)["keep"], client(destination)["keep"]
    src.items.insert_many([{"_id": i, "v": i} for i in range(100)])
    dst.items.insert_many([{"_id": i, "v": "stale"} for i in range(50, 150)])
    topic = unique("nodrop")
    producer = cli(*producer_args(source, brokers, topic, "--sync-mode", "full"), name="producer").start()
    assert producer.wait(120) == 0, producer.log()
    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    wait_until(lambda: dst.items.count_documents({"v": "stale"}) == 50, 90, "the copy over existing documents")
    assert sorted(d["_id"] for d in dst.items.find({"v": {"$ne": "stale"}})) == list(range(100))
    assert "conflict:" not in consumer.log()
    assert consumer.terminate() == 0


def consumer_metric(process, series: str) -> float:
    text = urllib.request.urlopen(endpoint_url(process.log(), "/metrics"), timeout=10).read().decode()
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_copied_value_only_the_destination_holds_is_a_conflict_once_the_copy_overlap_is_written(
        source, destination, brokers, cli) -> None:
    """A copied document the unique index refuses is parked while a later change could free its value; once the
    stream is past the copy and nothing did, it is a duplicate_key conflict, not a document silently missing."""
    name = unique("held")
    src, dst = client(source)[name]["u"], client(destination)[name]["u"]
    for collection in (src, dst):
        collection.create_index("x", unique=True)
    src.insert_many([{"_id": "A", "x": 1}, {"_id": "B", "x": 2}])
    dst.insert_one({"_id": "Z", "x": 1})  # only the destination has it
    topic = unique("held")
    producer = cli(*producer_args(source, brokers, topic, "--sync-mode", "all"), name="producer").start()
    consumer = cli(*consumer_args(destination, brokers, topic, "--conflict-write-to", "db"), name="consumer").start()
    conflicts = 'kafkashake_consumer_conflicts_total{kind="duplicate_key"}'
    wait_until(lambda: "/status" in consumer.log(), 60, "the consumer's endpoint")
    wait_until(lambda: consumer_metric(consumer, conflicts) == 1, 120, "the refused copy to become a conflict")
    assert "waits for a later one to free a unique value" in consumer.log(), "parked first"
    assert consumer_metric(consumer, "kafkashake_consumer_parked_changes") == 0
    assert sorted(dst.find(), key=lambda d: d["_id"]) == [{"_id": "B", "x": 2}, {"_id": "Z", "x": 1}]
    assert producer.terminate() == 0 and consumer.terminate() == 0, consumer.log()
