"""Replay policies end to end: conflicts (default, --upsert, --insert-on-dup-update, --conflict-write-to db),
--target-delay per event, namespace filters and transforms, and replaying a whole topic twice."""
from __future__ import annotations

import datetime as dt
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from conftest import checkpointed, client, consumer_args, producer_args, unique, wait_until
from kafkashake.demo import workload
from kafkashake.schemas.codec import decode_events
from test_pipeline import read_topic, wait_equal

pytestmark = pytest.mark.e2e


def test_conflict_policies(stack, source, destination, brokers, cli) -> None:
    src = client(source)
    src["shop"]["items"].insert_one({"_id": 2, "x": 1})  # before the producer starts: never replicated
    other = stack.start_mongo(unique("dest-upsert"))
    try:
        destinations = {"plain": destination, "policies": other}
        for target in destinations.values():
            items = client(target)["shop"]["items"]
            items.create_index("email", unique=True, name="email_unique")
            items.insert_many([{"_id": 1, "stale": True, "a": 0, "email": "old"}, {"_id": 50, "email": "taken"}])
        topic = unique("conflicts")
        producer = cli(*producer_args(source, brokers, topic), name="producer").start()
        wait_until(lambda: checkpointed(source), 30, "first checkpoint")
        plain = cli(*consumer_args(destination, brokers, topic, "--conflict-write-to", "db"), name="plain").start()
        policies = cli(*consumer_args(other, brokers, topic, "--group", unique("g"), "--upsert", "--insert-on-dup-update",
                                      "--conflict-write-to", "db", "--conflict-db", "repairs"), name="policies").start()
        src["shop"]["items"].insert_one({"_id": 1, "a": 1, "email": "one"})     # duplicate _id at the destination
        src["shop"]["items"].update_one({"_id": 2}, {"$set": {"y": 2}})          # document missing at the destination
        src["shop"]["items"].insert_one({"_id": 3, "email": "taken"})            # duplicate on another unique index
        src["shop"]["items"].insert_one({"_id": 4, "ok": True, "email": "four"})  # no conflict: applied
        for target in destinations.values():
            wait_until(lambda t=target: client(t)["shop"]["items"].find_one({"_id": 4}) is not None, 60, "replayed")

        # A refusal by a unique index other than _id is a conflict only once every partition has caught up with it
        # (it might have been early): the producer's next heartbeat tells.
        conflict_records = client(destination)["kafkashake_conflict"]["shop.items"]
        wait_until(lambda: conflict_records.count_documents({}) == 3, 60, "every conflict recorded")
        plain_items = client(destination)["shop"]["items"]
        assert plain_items.find_one({"_id": 1}) == {"_id": 1, "stale": True, "a": 0, "email": "old"}, "left as it is"
        assert plain_items.find_one({"_id": 2}) is None and plain_items.find_one({"_id": 3}) is None
        records = list(conflict_records.find())
        assert sorted(r["kind"] for r in records) == ["duplicate_key", "duplicate_key", "update_missing"]
        for record in records:
            assert record["ns"] == "shop.items" and record["event"]["ns"] == "shop.items"
            assert record["kafka"]["topic"] == topic and record["kafka"]["offset"] >= 0
            assert record["ts"] is not None and record["recorded_at"] is not None
        assert {r["index"] for r in records if r["kind"] == "duplicate_key"} == {"_id_", "email_unique"}
        assert all(r["code"] == 11000 for r in records if r["kind"] == "duplicate_key")

        policy_items = client(other)["shop"]["items"]
        assert policy_items.find_one({"_id": 1}) == {"_id": 1, "a": 1, "email": "one"}, "replaced whole: stale gone"
        assert policy_items.find_one({"_id": 2}) == {"_id": 2, "y": 2}, "what an upsert of the update creates"
        assert policy_items.find_one({"_id": 3}) is None
        wait_until(lambda: client(other)["repairs"]["shop.items"].count_documents({}) == 1, 60, "recorded")
        [secondary] = list(client(other)["repairs"]["shop.items"].find())
        assert secondary["kind"] == "duplicate_key" and secondary["index"] == "email_unique"
        for process in (producer, plain, policies):
            assert process.terminate() == 0
    finally:
        other.stop()


def test_target_delay_holds_every_event_until_due(source, destination, brokers, cli) -> None:
    delay = 3.0
    topic = unique("delay")
    src, dst = client(source), client(destination)
    producer = cli(*producer_args(source, brokers, topic, "--format", "raw"), name="producer").start()
    consumer = cli(*consumer_args(destination, brokers, topic, "--target-delay", str(delay)), name="consumer").start()
    wait_until(lambda: checkpointed(source), 30, "first checkpoint")
    wait_until(lambda: "partition assigned" in consumer.log(), 60, "the consumer joined before the burst")
    for i in range(30):
        src["shop"]["burst"].insert_one({"_id": i})
        time.sleep(0.05)
    written = {e["o"]["_id"]: e["wall"].replace(tzinfo=dt.timezone.utc).timestamp()
               for e in src["local"]["oplog.rs"].find({"ns": "shop.burst"})}
    seen: dict[int, float] = {}
    deadline = time.time() + 30
    while len(seen) < 30 and time.time() < deadline:
        now = time.time()
        for document in dst["shop"]["burst"].find({"_id": {"$nin": list(seen)}}):
            seen[document["_id"]] = now
        time.sleep(0.05)
    assert len(seen) == 30
    early = {i: seen[i] - written[i] for i in seen if seen[i] < written[i] + delay}
    assert not early, f"applied before source time + delay: {early}"
    late = {i: seen[i] - written[i] for i in seen if seen[i] > written[i] + delay + 5.0}  # slack for a busy machine
    assert not late, f"applied long after it was due: {late}"
    assert producer.terminate() == 0 and consumer.terminate() == 0


def test_namespace_filters_and_transforms(source, destination, brokers, cli) -> None:
    topic = unique("ns")
    src, dst = client(source), client(destination)
    producer = cli(*producer_args(source, brokers, topic, "--filter-namespace-black", "shop.secret"),
                   name="producer").start()
    consumer = cli(*consumer_args(destination, brokers, topic, "--filter-namespace-white", "shop",
                                  "--transform-namespace", "shop.items:archive.items_copy;shop:mirror"),
                   name="consumer").start()
    wait_until(lambda: checkpointed(source), 30, "first checkpoint")
    src["shop"]["items"].insert_many([{"_id": i, "v": i} for i in range(10)])
    src["shop"]["other"].insert_many([{"_id": i} for i in range(5)])
    src["elsewhere"]["c"].insert_one({"_id": 1})
    with src.start_session() as session, session.start_transaction():
        src["shop"]["secret"].insert_one({"_id": "s"}, session=session)
        src["shop"]["items"].update_one({"_id": 1}, {"$set": {"v": 100}}, session=session)
        src["elsewhere"]["c"].insert_one({"_id": 2}, session=session)
    wait_until(lambda: (dst["archive"]["items_copy"].find_one({"_id": 1}) or {}).get("v") == 100, 60, "replayed")
    assert list(dst["archive"]["items_copy"].find().sort("_id")) == list(src["shop"]["items"].find().sort("_id"))
    wait_until(lambda: dst["mirror"]["other"].count_documents({}) == 5, 30, "db rename")
    assert "shop" not in dst.list_database_names() and "elsewhere" not in dst.list_database_names()
    assert dst["mirror"]["secret"].count_documents({}) == 0
    assert producer.terminate() == 0 and consumer.terminate() == 0


def test_replaying_a_whole_topic_twice_gives_the_same_state(source, destination, brokers, cli) -> None:
    topic = unique("twice")
    producer = cli(*producer_args(source, brokers, topic, "--start-position", "earliest"), name="producer").start()
    workload.run_workload(client(source)["shop"], 400, seed=9)
    first = cli(*consumer_args(destination, brokers, topic, "--group", unique("first")), name="first").start()
    wait_equal(source, destination, "shop")
    assert first.terminate() == 0
    ends = end_offsets(brokers, topic)
    second_group = unique("second")
    second = cli(*consumer_args(destination, brokers, topic, "--group", second_group), name="second").start()
    wait_until(lambda: committed_through(brokers, second_group, ends), 120, "the second replay reached the end")
    wait_equal(source, destination, "shop")
    assert second.terminate() == 0 and producer.terminate() == 0


def end_offsets(brokers: str, topic: str, partitions: int = 8) -> dict[TopicPartition, int]:
    reader = Consumer({"bootstrap.servers": brokers, "group.id": unique("ends")})
    try:
        return {TopicPartition(topic, p): reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(partitions)}
    finally:
        reader.close()


def committed_through(brokers: str, group: str, ends: dict[TopicPartition, int]) -> bool:
    """Whether `group` has committed every partition at least up to `ends`."""
    reader = Consumer({"bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False})
    try:
        committed = reader.committed(list(ends), timeout=10)
    finally:
        reader.close()
    return all(tp.offset >= ends[TopicPartition(tp.topic, tp.partition)] for tp in committed)


def test_exit_at_stops_both_processes_after_everything_up_to_it(source, destination, brokers, cli) -> None:
    topic = unique("exit")
    src, dst = client(source), client(destination)
    producer = cli(*producer_args(source, brokers, topic), name="producer").start()
    wait_until(lambda: checkpointed(source), 30, "first checkpoint")
    src["shop"]["before"].insert_many([{"_id": i} for i in range(40)])
    last_before = max(entry["ts"] for entry in src["local"]["oplog.rs"].find({"ns": "shop.before"}, {"ts": 1}))
    exit_at = dt.datetime.fromtimestamp(last_before.time, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    wait_until(lambda: time.time() >= last_before.time + 1, 10, "the exit point's second is over", interval=0.05)
    src["shop"]["after"].insert_many([{"_id": i} for i in range(40)])

    consumer = cli(*consumer_args(destination, brokers, topic, "--exit-at", exit_at), name="consumer").start()
    assert consumer.wait(90) == 0, consumer.log()
    assert "exit point reached" in consumer.log()
    assert dst["shop"]["before"].count_documents({}) == 40
    assert dst["shop"]["after"].count_documents({}) == 0, "nothing after the exit point is applied"

    bounded_topic = unique("exit-bounded")
    bounded = cli(*producer_args(source, brokers, bounded_topic, "--name", "bounded", "--start-position",
                                 "earliest", "--exit-at", exit_at), name="bounded").start()
    assert bounded.wait(60) == 0, bounded.log()
    assert "exit point reached" in bounded.log()
    published = [e for m in read_topic(brokers, bounded_topic) for e in decode_events(m.value())]
    limit = dt.datetime.strptime(exit_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
    assert sum(e["ns"] == "shop.before" for e in published) == 40
    assert all(e["ts"].time <= limit for e in published) and not any(e["ns"] == "shop.after" for e in published)
    assert producer.terminate() == 0


def test_ddl_barrier_orders_ddl_across_partitions_and_two_consumers(source, destination, brokers, cli) -> None:
    topic = unique("ddl")
    src, dst = client(source), client(destination)
    producer = cli(*producer_args(source, brokers, topic, "--ddl"), name="producer").start()
    group = unique("ddl-group")
    consumers = [cli(*consumer_args(destination, brokers, topic, "--ddl", "--group", group), name=f"consumer{i}").start()
                 for i in range(2)]
    wait_until(lambda: checkpointed(source), 30, "first checkpoint")
    wait_until(lambda: all("partition assigned" in c.log() for c in consumers), 60, "both consumers own partitions")
    app = src["app"]
    app["temp"].insert_many([{"_id": i} for i in range(40)])   # spread over every partition
    app["temp"].drop()                                         # must not be overtaken by any of those inserts
    app["users"].insert_many([{"_id": i, "email": f"u{i}@x"} for i in range(40)])
    app["users"].create_index("email", unique=True, name="email_unique")
    app["users"].insert_many([{"_id": 100 + i, "email": f"late{i}@x"} for i in range(10)])
    app["old"].insert_many([{"_id": i} for i in range(20)])
    app["old"].rename("renamed")
    app["marker"].insert_one({"_id": "done"})
    wait_until(lambda: dst["app"]["marker"].find_one() is not None, 90, "replay reached the end")
    wait_until(lambda: dst["app"]["renamed"].count_documents({}) == 20, 60, "rename after its inserts")
    names = dst["app"].list_collection_names()
    assert "temp" not in names, "the drop applied after every insert of the collection, in every partition"
    assert "old" not in names
    assert "email_unique" in dst["app"]["users"].index_information()
    assert dst["app"]["users"].count_documents({}) == 50
    barriers = list(dst["kafkashake"]["ddl_barrier"].find())
    assert barriers and all(b["state"] == "applied" and len(b["arrived"]) == b["partitions"] == 8 for b in barriers)
    assert producer.terminate() == 0 and all(c.terminate() == 0 for c in consumers)
