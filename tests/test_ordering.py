"""Order across partitions and topics: a unique value moved from one document to another, and a rename whose
old and new names have topics of their own."""
from __future__ import annotations

import re
import urllib.request

import pytest
from pymongo import ASCENDING

from conftest import checkpointed, client, consumer_args, endpoint_url, producer_args, unique, wait_until
from test_pipeline import wait_equal

pytestmark = pytest.mark.e2e

ROUNDS = 300


def metric(process, name: str) -> float:
    text = urllib.request.urlopen(endpoint_url(process.log(), "/metrics"), timeout=10).read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("variant, consumers, policy", [
    ("update", 1, []),
    ("delete", 2, []),
    ("update", 1, ["--insert-on-dup-update", "--upsert"]),
    ("delete", 1, ["--ddl"]),
], ids=["update-1-consumer", "delete-2-consumers", "update-upsert", "delete-ddl"])
def test_a_unique_value_moved_between_documents_is_never_lost(source, destination, brokers, cli, variant: str,
                                                               consumers: int, policy: list[str]) -> None:
    topic = unique(f"unique-{variant}")
    ddl = ["--ddl"] if "--ddl" in policy else []
    src, dst = client(source)["people"]["users"], client(destination)["people"]["users"]
    producer = cli(*producer_args(source, brokers, topic, "--start-position", "earliest", *ddl),
                   name="producer").start()
    wait_until(lambda: checkpointed(source), 60, "first checkpoint")
    src.create_index([("email", ASCENDING)], unique=True)
    if not ddl:
        dst.create_index([("email", ASCENDING)], unique=True)
    src.insert_many([{"_id": f"a{i}", "email": f"e{i}@x", "role": "first"} for i in range(ROUNDS)])
    group = unique("group")
    running = [cli(*consumer_args(destination, brokers, topic, "--group", group, *policy),
                   name="consumer0").start()]
    for i in range(ROUNDS):
        if variant == "update":
            src.update_one({"_id": f"a{i}"}, {"$set": {"email": f"e{i}@moved"}})
        else:
            src.delete_one({"_id": f"a{i}"})
        src.insert_one({"_id": f"b{i}", "email": f"e{i}@x", "role": "second"})
        if i == ROUNDS // 2 and consumers > 1:
            # The second instance joins while the first is mid-way: the partitions it takes over are read again
            # from checkpoints that stop before changes held for source order.
            wait_until(lambda: dst.count_documents({"role": "second"}) > 0, 120, "the first consumer applying")
            running += [cli(*consumer_args(destination, brokers, topic, "--group", group, *policy),
                            name=f"consumer{n}").start() for n in range(1, consumers)]
    wait_equal(source, destination, "people", timeout=300)
    conflicts = sum(metric(consumer, 'kafkashake_consumer_conflicts_total{kind="duplicate_key"}')
                    for consumer in running)
    assert conflicts == 0, "no write the source made was refused in the end"
    assert producer.terminate() == 0
    for consumer in running:
        assert consumer.terminate() == 0, consumer.log()


def test_rename_with_one_topic_per_namespace_keeps_its_place_in_both_topics(source, destination, brokers,
                                                                             cli) -> None:
    prefix = unique("rn")
    producer = cli(*producer_args(source, brokers, prefix + ".{db}.{coll}", "--start-position", "earliest", "--ddl"),
                   name="producer").start()
    consumer = cli("consumer", "run", "--dest-uri", destination_uri(destination), "--brokers", brokers,
                   "--topic-pattern", f"^{re.escape(prefix)}\\..*", "--metrics-port", "0", "--ddl",
                   "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=1000", name="consumer").start()
    wait_until(lambda: checkpointed(source), 60, "first checkpoint")
    db = client(source)["rn"]
    db["x"].insert_many([{"_id": i, "v": "before"} for i in range(100)])
    db["x"].rename("y")
    db["y"].update_many({}, {"$set": {"v": "after"}})
    db["y"].insert_many([{"_id": i, "v": "new"} for i in range(100, 150)])
    wait_equal(source, destination, "rn", timeout=180)
    assert set(client(destination)["rn"].list_collection_names()) == {"y"}
    log = consumer.log()
    assert "conflict:" not in log and "dead letter" not in log
    assert producer.terminate() == 0 and consumer.terminate() == 0


def destination_uri(destination) -> str:
    from kafkashake.demo import embedded

    return embedded.mongo_uri(destination)
