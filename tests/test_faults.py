"""Faults on real processes: every one either recovers or stops loudly, and the destination ends equal to the source.

kill -9 of either process, a frozen broker, the source and the destination going away for 10 s, and a producer
failing over to a standby (--ha) with fenced checkpoints."""
from __future__ import annotations

import signal
import threading
import time

import pytest

from conftest import client, consumer_args, producer_args, unique, wait_until
from kafkashake.demo import embedded, workload
from kafkashake.producer.checkpoint import Checkpoint, CheckpointStore, FencedError
from test_pipeline import wait_equal

pytestmark = pytest.mark.e2e


class Workload:
    """The mixed workload in a background thread, in rounds with distinct seeds."""

    def __init__(self, db) -> None:
        self.db = db
        self.errors: list[BaseException] = []
        self._thread: threading.Thread | None = None

    def start(self, operations: int, seed: int) -> "Workload":
        def drive() -> None:
            try:
                workload.run_workload(self.db, operations, seed=seed, transactions=False)
            except BaseException as exc:  # noqa: BLE001 - reported by join()
                self.errors.append(exc)

        self._thread = threading.Thread(target=drive, daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float = 300) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the workload did not finish"
        assert not self.errors, self.errors


def documents_in(db) -> int:
    return sum(db[name].estimated_document_count() for name in db.list_collection_names())


def round_db(source, round_: int):
    """Each round writes its own database, so rounds with restarted id counters never collide."""
    return client(source)[f"round{round_}"]


def test_kill9_each_process_five_times_and_every_time_the_destination_catches_up(source, destination, brokers,
                                                                                  cli) -> None:
    topic = unique("kill9x10")
    producer = cli(*producer_args(source, brokers, topic, "--start-position", "earliest"), name="producer").start()
    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    for round_ in range(10):
        victim = producer if round_ % 2 == 0 else consumer
        running = Workload(round_db(source, round_)).start(300, seed=round_)
        wait_until(lambda: documents_in(client(destination)[f"round{round_}"]) >= 20, 120,
                   "part of the round replicated")
        victim.kill9()
        victim.start()
        running.join()
        wait_equal(source, destination, f"round{round_}", timeout=120)
    assert producer.terminate() == 0 and consumer.terminate() == 0


def test_broker_frozen_for_20_seconds_both_processes_recover(own_kafka, source, destination, cli) -> None:
    broker = own_kafka()
    brokers = broker.bootstrap
    topic = unique("frozen")
    producer = cli(*producer_args(source, brokers, topic, "--start-position", "earliest"), name="producer").start()
    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    try:
        Workload(client(source)["before"]).start(200, seed=1).join()
        wait_equal(source, destination, "before")
        during = Workload(client(source)["during"]).start(400, seed=2)
        broker.signal(signal.SIGSTOP)
        time.sleep(20)
        broker.signal(signal.SIGCONT)
        during.join()
        wait_equal(source, destination, "during", timeout=180)
        assert producer.running and consumer.running
        assert producer.terminate() == 0, producer.log()
        assert consumer.terminate() == 0, consumer.log()
    finally:
        broker.signal(signal.SIGCONT)


def test_source_down_for_10_seconds_producer_resumes(stack, destination, brokers, cli) -> None:
    source = stack.start_mongo(unique("restarted-source"))
    topic = unique("source-down")
    producer = cli(*producer_args(source, brokers, topic, "--start-position", "earliest"), name="producer").start()
    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    try:
        Workload(client(source)["first"]).start(200, seed=3).join()
        wait_equal(source, destination, "first")
        source.stop()
        time.sleep(10)
        source = stack.restart(source)
        Workload(client(source)["second"]).start(200, seed=4).join()
        wait_equal(source, destination, "second", timeout=180)
        wait_equal(source, destination, "first")
        assert producer.running, producer.log()
        assert "retrying" in producer.log()
        assert producer.terminate() == 0 and consumer.terminate() == 0
    finally:
        source.stop()


def test_destination_down_for_10_seconds_consumer_retries_and_loses_nothing(stack, source, brokers, cli) -> None:
    destination = stack.start_mongo(unique("restarted-dest"))
    topic = unique("dest-down")
    producer = cli(*producer_args(source, brokers, topic, "--start-position", "earliest"), name="producer").start()
    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    try:
        Workload(client(source)["first"]).start(150, seed=5).join()
        wait_equal(source, destination, "first")
        destination.stop()
        Workload(client(source)["second"]).start(300, seed=6).join()  # written while the destination is away
        time.sleep(10)
        destination = stack.restart(destination)
        wait_equal(source, destination, "second", timeout=180)
        assert consumer.running, consumer.log()
        assert "retrying" in consumer.log()
        assert consumer.terminate() == 0 and producer.terminate() == 0
    finally:
        destination.stop()


def refuse_checkpoint_writes(store, refuse: bool, producer) -> int:
    """The checkpoint store answers every producer update with WriteConflict (a transient error) until told
    otherwise. Returns how much the producer had logged before."""
    logged = len(producer.log())
    client(store).admin.command("configureFailPoint", "failCommand", mode="alwaysOn" if refuse else "off",
                                data={"failCommands": ["update"], "appName": "kafkashake-producer", "errorCode": 112})
    return logged


def test_a_failing_checkpoint_store_holds_back_the_checkpoint_not_the_stream(stack, source, destination, brokers,
                                                                             cli) -> None:
    store = stack.start_mongo(unique("checkpoint-store"), "--enable-test-commands")
    topic, db = unique("store-fails"), unique("store_fails").replace("-", "_")
    producer = cli(*producer_args(source, brokers, topic, "--checkpoint-uri", embedded.mongo_uri(store)),
                   name="producer").start()
    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    checkpoints = client(store)["kafkashake"]["checkpoint"]
    items = client(source)[db]["items"]
    try:
        wait_until(lambda: checkpoints.find_one({}) is not None, 60, "the first checkpoint")
        items.insert_many([{"_id": i, "round": 1} for i in range(100)])
        wait_equal(source, destination, db)
        refused_from = refuse_checkpoint_writes(store, True, producer)
        items.insert_one({"_id": "moves the checkpoint", "round": 1})
        wait_until(lambda: "saving the checkpoint" in producer.log()[refused_from:], 60, "a checkpoint write refused")
        held = checkpoints.find_one({})["ts"]

        items.insert_many([{"_id": i, "round": 2} for i in range(100, 600)])
        wait_equal(source, destination, db)  # published while every checkpoint write is refused
        assert checkpoints.find_one({})["ts"] == held
        assert producer.running, producer.log()[-2000:]

        refuse_checkpoint_writes(store, False, producer)
        newest = client(source).local["oplog.rs"].find_one({"ns": f"{db}.items"}, sort=[("$natural", -1)])["ts"]
        wait_until(lambda: checkpoints.find_one({})["ts"] >= newest, 60, "the checkpoint to catch up")

        # Stopped while the store refuses: the final checkpoint is retried a while, then the producer says it could
        # not save it and exits 1 instead of 0.
        refused_from = refuse_checkpoint_writes(store, True, producer)
        written = items.insert_one({"_id": "published, not checkpointed", "round": 3})
        wait_until(lambda: "saving the checkpoint" in producer.log()[refused_from:], 60, "a checkpoint write refused")
        held = checkpoints.find_one({})["ts"]
        assert held < client(source).local["oplog.rs"].find_one({"o._id": written.inserted_id})["ts"]
        assert producer.terminate() == 1
        assert "could not save the final checkpoint" in producer.log()[refused_from:]
        assert checkpoints.find_one({})["ts"] == held
        assert consumer.terminate() == 0
    finally:
        store.stop()


def test_ha_standby_takes_over_within_the_lease_after_kill9(source, destination, brokers, cli) -> None:
    topic = unique("ha")
    lease_s = 4.0
    args = producer_args(source, brokers, topic, "--start-position", "earliest", "--ha", "--ha-lease-seconds",
                         str(lease_s))
    first = cli(*args, name="producer-a").start()
    wait_until(lambda: "leading" in first.log(), 60, "a leader")
    second = cli(*args, name="producer-b").start()
    wait_until(lambda: "standing by" in second.log(), 60, "a standby")
    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    leases = client(source)["kafkashake"]["lease"]
    running = Workload(client(source)["ha"]).start(1500, seed=7)
    wait_until(lambda: documents_in(client(destination)["ha"]) >= 100, 120, "part of the workload replicated")
    first.kill9()
    killed_at = time.monotonic()
    wait_until(lambda: "leading" in second.log(), lease_s + 10, "the standby to take over", interval=0.1)
    took_over_after = time.monotonic() - killed_at
    assert took_over_after <= lease_s + 2, took_over_after
    assert leases.find_one({"_id": "kafkashake"})["epoch"] == 2
    running.join()
    wait_equal(source, destination, "ha", timeout=180)
    assert second.terminate() == 0 and consumer.terminate() == 0
    print(f"standby took over {took_over_after:.1f} s after the leader was killed (lease {lease_s} s)")


def test_a_stale_leader_cannot_move_the_checkpoint(shared_mongo) -> None:
    collection = client(shared_mongo)["fencing"][unique("checkpoint")]
    old, new = CheckpointStore(collection, "task", "oplog"), CheckpointStore(collection, "task", "oplog")
    old.claim(1)
    old.save(Checkpoint(_ts(10)))
    new.claim(2)
    new.save(Checkpoint(_ts(20)))
    with pytest.raises(FencedError):
        old.save(Checkpoint(_ts(30)))
    with pytest.raises(FencedError):
        CheckpointStore(collection, "task", "oplog").claim(1)
    assert collection.find_one({"_id": "task"})["ts"] == _ts(20)


def _ts(seconds: int):
    from bson.timestamp import Timestamp

    return Timestamp(1_800_000_000 + seconds, 1)


def block_the_second_delete(destination, seconds: int) -> None:
    """The consumer's first delete command goes through; its second waits `seconds` on the server, then runs."""
    client(destination).admin.command(
        "configureFailPoint", "failCommand", mode={"skip": 1, "times": 1},
        data={"failCommands": ["delete"], "appName": "kafkashake-consumer", "blockConnection": True,
              "blockTimeMS": seconds * 1000})


def consumer_deleting(destination) -> bool:
    return any(op.get("op") == "delete" and op.get("clientMetadata", {}).get("application", {}).get("name")
               == "kafkashake-consumer" for op in client(destination).admin.command("currentOp")["inprog"])


def test_kill9_after_a_write_before_its_checkpoint_replays_it_without_loss_on_a_unique_index(stack, source, brokers,
                                                                                              cli) -> None:
    """The crash the write-ahead mark is for: a batch is written (its last delete held on the server), the consumer
    is killed before its checkpoint, and the restarted consumer reads the batch again. Applied again as new
    changes, X's re-insert would collide with the value Y took after it, and X would be lost."""
    destination = stack.start_mongo(unique("crash-dest"), "--enable-test-commands")
    topic, db = unique("crash-unique"), unique("crash_unique").replace("-", "_")
    items = client(source)[db]["items"]
    items.create_index("x", unique=True)
    items.insert_many([{"_id": "X", "x": 1}, {"_id": "Y", "x": 2}, {"_id": "Z", "x": 9}])
    copied = client(destination)[db]["items"]
    copied.create_index("x", unique=True)  # as a user would before replicating without --ddl
    # One partition: no other partition's progress to wait for, so the batch read on restart is written at once.
    producer = cli(*producer_args(source, brokers, topic, "--start-position", "earliest", "--partitions", "1"),
                   name="producer").start()
    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    try:
        wait_equal(source, destination, db)
        assert consumer.terminate() == 0  # the changes wait in Kafka, to be read in one poll on restart
        items.delete_one({"_id": "X"})
        items.insert_one({"_id": "X", "x": 1, "turn": 1})
        items.update_one({"_id": "X"}, {"$set": {"x": 3}})
        items.update_one({"_id": "Y"}, {"$set": {"x": 1}})
        items.delete_one({"_id": "Z"})
        block_the_second_delete(destination, seconds=45)  # ample time to see it held
        consumer.start()

        wait_until(lambda: consumer_deleting(destination), 60, "the consumer's delete of Z held on the server")
        assert copied.find_one({"_id": "Y"}) == {"_id": "Y", "x": 1}, "the changes before it are written"
        consumer.kill9()  # before the batch's checkpoint
        wait_until(lambda: copied.find_one({"_id": "Z"}) is None, 90, "the held delete of Z to run")
        checkpoints = list(client(destination)["kafkashake"]["consumer_checkpoint"].find({"topic": topic}))
        assert any(c.get("writing_through") and c["writing_through"]["through"][0] > c["offset"] for c in checkpoints)

        consumer.start()
        items.insert_one({"_id": "W", "x": 4})
        wait_until(lambda: copied.find_one({"_id": "W"}) is not None, 120, "the restarted consumer to go on")
        assert workload.differences(client(source)[db], client(destination)[db], field_order=True) == []
        assert "conflict" not in consumer.log(), consumer.log()[-3000:]
        assert client(destination)["kafkashake_conflict"].list_collection_names() == []
        assert consumer.terminate() == 0 and producer.terminate() == 0
    finally:
        destination.stop()
