"""Dead letters: bad messages mixed among good ones; every good one is applied, every bad one dead-lettered."""
from __future__ import annotations

import io
import re
import subprocess
import sys
import urllib.request

import bson
import fastavro
import pytest
from bson.timestamp import Timestamp
from confluent_kafka import Producer

from conftest import client, consumer_args, endpoint_url, unique, wait_until
from kafkashake.runtime.kafka_topics import TopicDirectory
from kafkashake.schemas import headers
from test_pipeline import read_topic

pytestmark = pytest.mark.e2e
GOOD = 40


def event(op: str, ns: str, document: dict, inc: int) -> bytes:
    return bson.encode({"op": op, "ns": ns, "o": document, "ts": Timestamp(1_800_000_000, inc)})


def wrong_schema_avro() -> bytes:
    buffer = io.BytesIO()
    schema = {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "int"}]}
    fastavro.writer(buffer, fastavro.parse_schema(schema), [{"x": 1}])
    return buffer.getvalue()


def bad_messages() -> dict[str, tuple[bytes, str]]:
    """name → (value, the reason the consumer must give)."""
    good = event("i", "dl.items", {"_id": "x"}, 9999)
    return {
        "garbage": (b"\x00\x01\x02 definitely not an event", "undecodable"),
        "truncated-bson": (good[:-7], "undecodable"),
        "json-not-an-event": (b'{"hello": "world"}', "undecodable"),
        "avro-wrong-schema": (wrong_schema_avro(), "undecodable"),
        "empty": (b"", "undecodable"),
        "unknown-op": (event("x", "dl.items", {"_id": "unknown"}, 10_000), "unknown_op"),
        "rejected-by-validator": (event("i", "dl.strict", {"_id": "no-name"}, 10_001), "rejected"),
    }


def publish_mixed(brokers: str, topic: str) -> dict[str, tuple[bytes, str]]:
    TopicDirectory({"bootstrap.servers": brokers}, 2, -1).partitions(topic)
    producer = Producer({"bootstrap.servers": brokers})
    bad = bad_messages()
    bad_names = list(bad)
    for i in range(GOOD):
        partition = i % 2
        producer.produce(topic, event("i", "dl.items", {"_id": i, "v": i}, i + 1), key=str(i).encode(),
                         partition=partition)
        if i % 5 == 2 and bad_names:
            name = bad_names.pop(0)
            producer.produce(topic, bad[name][0], key=name.encode(), partition=partition,
                             headers=[("origin", b"test"), ("case", name.encode())])
    producer.produce(topic, event("i", "dl.strict", {"_id": "named", "name": "ok"}, 10_002), partition=0)
    producer.flush(30)
    assert not bad_names
    return bad


def test_bad_messages_are_dead_lettered_and_good_ones_applied(destination, brokers, cli) -> None:
    dst = client(destination)["dl"]
    dst.create_collection("strict", validator={"$jsonSchema": {"required": ["name"]}})
    topic = unique("dlq")
    bad = publish_mixed(brokers, topic)
    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    wait_until(lambda: dst.items.count_documents({}) == GOOD and dst.strict.count_documents({}) == 1
               or not consumer.running, 90, "every good event applied")
    assert consumer.running, consumer.log()
    assert sorted(d["_id"] for d in dst.items.find()) == list(range(GOOD))

    letters = read_topic(brokers, f"{topic}.dlq", partitions=1)
    by_case = {headers.as_dict(m.headers()).get("case") or m.key().decode(): m for m in letters}
    assert set(by_case) == set(bad), set(by_case) ^ set(bad)
    for name, message in by_case.items():
        value, reason = bad[name]
        letter = headers.as_dict(message.headers())
        assert letter[headers.DLQ_REASON] == reason, (name, letter)
        assert (message.value() or b"") == value and message.key() == name.encode()
        assert letter["origin"] == "test" and letter[headers.DLQ_TOPIC] == topic
        assert letter[headers.DLQ_ERROR] and letter[headers.DLQ_TIME].endswith("Z")
        assert int(letter[headers.DLQ_PARTITION]) in (0, 1) and int(letter[headers.DLQ_OFFSET]) >= 0

    metrics = urllib.request.urlopen(endpoint_url(consumer.log(), "/metrics"), timeout=10).read().decode()
    counted = {m.group(1): float(m.group(2))
               for m in re.finditer(r'kafkashake_consumer_dead_letters_total\{reason="(\w+)"\} (\S+)', metrics)}
    assert counted == {"undecodable": 5.0, "unknown_op": 1.0, "rejected": 1.0, "unapplicable_update": 0.0}
    assert consumer.terminate() == 0, consumer.log()

    shown = subprocess.run([sys.executable, "-m", "kafkashake", "inspect", "--brokers", brokers, "--topic",
                            f"{topic}.dlq"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("dead letter: undecodable") == 5 and "dead letter: rejected" in shown.stdout


def test_on_error_stop_exits_before_the_bad_message(destination, brokers, cli) -> None:
    topic = unique("dlq-stop")
    TopicDirectory({"bootstrap.servers": brokers}, 1, -1).partitions(topic)
    producer = Producer({"bootstrap.servers": brokers})
    producer.produce(topic, event("i", "stop.items", {"_id": 1}, 1))
    producer.produce(topic, b"garbage")
    producer.produce(topic, event("i", "stop.items", {"_id": 2}, 2))
    producer.flush(30)
    consumer = cli(*consumer_args(destination, brokers, topic, "--on-error", "stop"), name="consumer").start()
    assert consumer.wait(90) == 1
    assert "cannot be decoded" in consumer.log() and "--on-error dlq" in consumer.log()
    assert [d["_id"] for d in client(destination)["stop"]["items"].find()] == [1]
