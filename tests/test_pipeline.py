"""End to end on real processes: SecantusDB → producer → Apache Kafka → consumer → SecantusDB."""
from __future__ import annotations

import math
import re
import subprocess
import urllib.request
import sys
import time
from collections import defaultdict
from typing import Any

import bson
import pytest
from bson import json_util
from confluent_kafka import Consumer, Producer, TopicPartition

import conftest
from conftest import FAST_GROUP, ROOT, checkpointed, client, consumer_args, endpoint_url, unique, wait_until
from kafkashake.demo import embedded, workload
from kafkashake.schemas import fragments, headers
from kafkashake.schemas.codec import decode_events, sniff
from kafkashake.schemas.partitioning import PartitionBy, key_text, message_key, partition_for

pytestmark = pytest.mark.e2e


def producer_args(source, brokers: str, topic: str, *extra: str) -> list[str]:
    return conftest.producer_args(source, brokers, topic, "--start-position", "earliest", *extra)


def wait_equal(source, destination, db: str, timeout: float = 120, trace: tuple[str, str] | None = None) -> None:
    """`trace`: (brokers, topic) — on failure, also list every message of the topic that touches a differing document."""
    src, dst = client(source)[db], client(destination)[db]
    last: list[list[str]] = [[]]

    def equal() -> bool:
        last[0] = workload.differences(src, dst, field_order=False)
        return not last[0]

    try:
        wait_until(equal, timeout, "destination never equalled source")
    except pytest.fail.Exception:
        report = last[0][:20]
        if trace is not None:
            report += trace_documents(*trace, differing_ids(src, dst))
        pytest.fail("destination differs from source:\n" + "\n".join(report))


def differing_ids(src, dst) -> dict[str, list]:
    """Per collection, the `_id`s whose documents differ (or exist on one side only)."""
    found: dict[str, list] = {}
    for name in sorted(set(src.list_collection_names()) | set(dst.list_collection_names())):
        a = {key_text(d["_id"]): bson.encode(d) for d in src[name].find()}
        b = {key_text(d["_id"]): bson.encode(d) for d in dst[name].find()}
        ids = [key for key in set(a) | set(b) if bson.decode(a.get(key, b"\x05\x00\x00\x00\x00")) !=
               bson.decode(b.get(key, b"\x05\x00\x00\x00\x00"))]
        if ids:
            found[f"{src.name}.{name}"] = ids
    return found


def trace_documents(brokers: str, topic: str, ids: dict[str, list]) -> list[str]:
    """Where each differing document's changes sit in the topic: partition@offset, operation, source time."""
    lines = []
    for message in read_topic(brokers, topic):
        for event in decode_events(message.value(), headers.as_dict(message.headers()).get(headers.JSON_RENDERING)):
            ns = event.get("ns")
            ns = f"{ns.get('db')}.{ns.get('coll')}" if isinstance(ns, dict) else ns
            key = event.get("documentKey") or event.get("o2") or event.get("o") or {}
            document_id = key.get("_id") if isinstance(key, dict) else None
            if ns in ids and key_text(document_id) in ids[ns]:
                lines.append(f"  {ns} {document_id!r}: {message.partition()}@{message.offset()} "
                             f"{event.get('operationType', event.get('op'))} {event.get('clusterTime', event.get('ts'))}")
    return lines or ["  (no message of the topic touches the differing documents)"]


class WholeMessage:
    """A message as a third party sees it once fragments are put back together."""

    def __init__(self, message, value: bytes | None) -> None:
        self._message, self._value = message, value

    def value(self) -> bytes | None:
        return self._value

    def __getattr__(self, name: str):
        return getattr(self._message, name)


def read_topic(brokers: str, topic: str, partitions: int = 8, heartbeats: bool = False) -> list:
    """Every whole message of the topic (fragments reassembled), without heartbeats unless asked for."""
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": unique("reader"), "enable.auto.commit": False,
                         "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    messages: list[WholeMessage] = []
    at_end: set[int] = set()
    reassemblies: dict[int, fragments.Reassembly] = defaultdict(fragments.Reassembly)
    deadline = time.monotonic() + 120
    while len(at_end) < partitions and time.monotonic() < deadline:
        for message in consumer.consume(500, 0.5):
            if message.error() is not None:
                at_end.add(message.partition())
                continue
            at_end.discard(message.partition())
            header = headers.as_dict(message.headers())
            if header.get(headers.HEARTBEAT) == "true" and not heartbeats:
                continue
            value = message.value()
            if fragments.is_fragment(header):
                whole = reassemblies[message.partition()].add(header, value, message.offset())
                if whole is None:
                    continue
                value = whole.value
            messages.append(WholeMessage(message, value))
    consumer.close()
    return messages


@pytest.mark.parametrize("message_format", ["raw", "json", "bson"])
def test_varied_workload_replicates_and_partitions_by_document(source, destination, brokers, cli,
                                                               message_format: str) -> None:
    topic = unique(f"e2e-{message_format}")
    producer = cli(*producer_args(source, brokers, topic, "--format", message_format), name="producer").start()
    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    issued = workload.run_workload(client(source)["shop"], 600)
    assert issued == 600
    wait_equal(source, destination, "shop")
    assert producer.terminate() == 0, producer.log()
    assert consumer.terminate() == 0, consumer.log()

    partitions_of: dict[tuple[str, bytes], set[int]] = defaultdict(set)
    for message in read_topic(brokers, topic):
        header = headers.as_dict(message.headers())
        events = decode_events(message.value())
        assert header[headers.FORMAT] == message_format and sniff(message.value()).value == message_format
        newest = events[-1]["ts"]
        assert header[headers.SOURCE_TS] == f"{newest.time},{newest.inc}"
        if message_format != "raw":
            assert header[headers.NAMESPACE] == events[0]["ns"] and header[headers.OPERATION] == events[0]["op"]
        for event in events:
            document_id = event["o2"]["_id"] if event["op"] == "u" else event["o"]["_id"]
            key = message_key(PartitionBy.ID, event["ns"], document_id)
            if message_format != "raw":
                assert message.key() == key
            assert message.partition() == partition_for(key, 8), "third parties can recompute the partition"
            partitions_of[(event["ns"], bson.encode({"": document_id}))].add(message.partition())
    assert len(partitions_of) > 100
    assert all(len(found) == 1 for found in partitions_of.values()), "every event of a document shares a partition"


def test_sigterm_checkpoints_and_restart_resumes_exclusively(source, destination, brokers, cli) -> None:
    topic = unique("resume")
    src = client(source)
    producer = cli(*producer_args(source, brokers, topic), name="producer").start()
    wait_until(lambda: checkpointed(source, "kafkashake"), 30, "the start position is checkpointed at once")
    src["shop"]["items"].insert_many([{"_id": i} for i in range(50)])
    wait_until(lambda: sum(len(decode_events(m.value())) for m in read_topic(brokers, topic)) >= 50, 60,
               "the first 50 events published")
    assert producer.terminate() == 0
    saved = src["kafkashake"]["checkpoint"].find_one({"_id": "kafkashake"})
    assert saved["fetch_method"] == "oplog" and "version" in saved and "updated_at" in saved
    src["shop"]["items"].insert_many([{"_id": i} for i in range(50, 80)])
    producer.start()
    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    wait_equal(source, destination, "shop")
    assert producer.terminate() == 0 and consumer.terminate() == 0
    events = [event for message in read_topic(brokers, topic) for event in decode_events(message.value())]
    assert len(events) == 80, "restarting from the checkpoint neither skips nor repeats"
    assert sorted(event["o"]["_id"] for event in events) == list(range(80))


def resume_headroom(producer: Any) -> float:
    metrics = urllib.request.urlopen(endpoint_url(producer.log(), "/metrics"), timeout=10).read().decode()
    return float(re.search(r"^kafkashake_producer_resume_headroom_seconds (\S+)$", metrics, re.M).group(1))


def test_checkpoint_fallen_off_the_oplog_exits_3_after_the_headroom_metric_warned(stack, brokers, cli) -> None:
    small = stack.start_mongo(unique("small-oplog"), "--oplog-max-entries", "40")
    try:
        topic = unique("rollover")
        src = client(small)
        src["shop"]["before"].insert_many([{"_id": i} for i in range(50)])
        producer = cli(*producer_args(small, brokers, topic), name="producer").start()
        wait_until(lambda: checkpointed(small), 30, "first checkpoint")
        wait_until(lambda: not math.isnan(resume_headroom(producer)), 30, "headroom measured (NaN until then)")
        headroom = resume_headroom(producer)
        threshold = float(re.search(r"resume_headroom_seconds < (\d+)",
                                    (ROOT / "deploy" / "alerts.yml").read_text()).group(1))
        assert headroom < threshold, "the ResumeHeadroomLow alert would not have warned"
        assert producer.terminate() == 0
        # SecantusDB enforces --oplog-max-entries every 1000 oplog writes.
        src["shop"]["items"].insert_many([{"_id": i} for i in range(1200)])
        assert src["local"]["oplog.rs"].count_documents({}) <= 1200
        restarted = cli(*producer_args(small, brokers, topic), name="producer-again").start()
        assert restarted.wait(60) == 3
        log = restarted.log()
        assert "older than the oldest oplog entry" in log and "To recover" in log
    finally:
        small.stop()


def test_unreachable_source_stops_with_a_clear_message(brokers, cli) -> None:
    closed_port = embedded.free_port()
    producer = cli("producer", "run", "--source-uri", f"mongodb://reader:pw-not-shown@127.0.0.1:{closed_port}/",
                   "--brokers", brokers, "--topic", unique("nowhere"), "--metrics-port", "0",
                   "--startup-timeout-seconds", "3", name="producer").start()
    assert producer.wait(120) == 1
    log = producer.log()
    assert "cannot reach the source" in log and "Check the host, port" in log
    assert "pw-not-shown" not in log


def test_topic_per_namespace_with_pattern_subscription_and_inspect(source, destination, brokers, cli) -> None:
    prefix = unique("cdc")
    producer = cli(*producer_args(source, brokers, prefix + ".{db}.{coll}", "--format", "json",
                                  "--compression", "zstd"), name="producer").start()
    consumer = cli("consumer", "run", "--dest-uri", embedded.mongo_uri(destination), "--brokers", brokers,
                   "--topic-pattern", f"^{prefix}\\..*", "--metrics-port", "0", *FAST_GROUP, name="consumer").start()
    workload.run_workload(client(source)["shop"], 300, seed=3)
    wait_equal(source, destination, "shop")
    assert producer.terminate() == 0 and consumer.terminate() == 0

    result = subprocess.run([sys.executable, "-m", "kafkashake", "inspect", "--brokers", brokers, "--topic",
                             f"{prefix}.shop.users", "--output", "json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    records = [json_util.loads(line) for line in result.stdout.splitlines()]
    assert records and all(r["event"]["ns"] == "shop.users" and r["format"] == "json" for r in records)
    assert all(r["headers"][headers.NAMESPACE] == "shop.users" for r in records)


def test_inspect_shows_undecodable_messages_with_their_headers(brokers) -> None:
    topic = unique("garbage")
    producer = Producer({"bootstrap.servers": brokers})
    producer.produce(topic, value=b"\x00garbage", headers=[("why", b"test")])
    producer.produce(topic, value=bson.encode({"op": "i", "ns": "a.b", "ts": bson.Timestamp(1, 1), "o": {"_id": 1}}))
    producer.flush(30)
    result = subprocess.run([sys.executable, "-m", "kafkashake", "inspect", "--brokers", brokers, "--topic", topic],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "UNDECODABLE" in result.stdout and '"why": "test"' in result.stdout
    assert '"ns": "a.b"' in result.stdout
