"""What the processes know about their own positions: a re-created topic, an exit point the producer has not reached,
lag on an idle source, and Kafka out of reach."""
from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request

import pytest
from confluent_kafka.admin import AdminClient

from conftest import (checkpointed, client, consumer_args, endpoint_url, producer_args, unique,
                      wait_until)
from kafkashake.demo import embedded
from test_pipeline import wait_equal

pytestmark = pytest.mark.e2e


def get(process, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(endpoint_url(process.log(), path), timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(process, name: str) -> float | None:
    found = re.search(rf"^{name} (\S+)$", get(process, "/metrics")[1], re.M)
    return None if found is None else float(found.group(1))


def delete_topic(brokers: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": brokers})
    admin.delete_topics([topic])[topic].result(60)
    wait_until(lambda: topic not in admin.list_topics(timeout=10).topics, 60, "the topic is gone")


def test_a_topic_deleted_and_re_created_is_read_from_its_start(source, destination, brokers, cli) -> None:
    topic, group = unique("recreated"), unique("group")
    docs = client(source)["resync"]["docs"]
    producer = cli(*producer_args(source, brokers, topic, "--name", "first", "--start-position", "earliest"),
                   name="producer").start()
    consumer = cli(*consumer_args(destination, brokers, topic, "--group", group), name="consumer").start()
    docs.insert_many([{"_id": i, "round": 1} for i in range(450)])
    wait_equal(source, destination, "resync")
    assert producer.terminate() == 0 and consumer.terminate() == 0
    delete_topic(brokers, topic)
    client(destination)["resync"].drop_collection("docs")
    docs.update_many({}, {"$set": {"round": 2}})
    resync = cli(*producer_args(source, brokers, topic, "--name", "second", "--sync-mode", "all"),
                 name="producer-again").start()
    again = cli(*consumer_args(destination, brokers, topic, "--group", group), name="consumer-again").start()
    wait_equal(source, destination, "resync", timeout=180)
    assert "deleted and re-created" in again.log()
    assert resync.terminate() == 0 and again.terminate() == 0


def test_exit_at_waits_until_the_producer_has_published_up_to_it(source, destination, brokers, cli) -> None:
    topic, group = unique("exit-behind"), unique("group")
    docs = client(source)["exits"]["docs"]
    producer = cli(*producer_args(source, brokers, topic, "--start-position", "earliest"), name="producer").start()
    wait_until(lambda: checkpointed(source), 60, "first checkpoint")
    docs.insert_many([{"_id": i, "phase": "before"} for i in range(100)])
    wait_until(lambda: client(source)["kafkashake"]["checkpoint"].find_one()["ts"] >= newest(source), 60,
               "the producer published the first phase")
    assert producer.terminate() == 0
    docs.insert_many([{"_id": i, "phase": "while the producer is down"} for i in range(100, 300)])
    exit_at = newest(source)
    docs.insert_many([{"_id": i, "phase": "after the exit point"} for i in range(300, 350)])
    consumer = cli(*consumer_args(destination, brokers, topic, "--group", group, "--exit-at",
                                  f"{exit_at.time},{exit_at.inc}"), name="consumer").start()
    wait_until(lambda: "waiting for the exit point" in consumer.log(), 120, "the consumer says what it waits for")
    assert consumer.running, "it must not report the exit point reached while the producer is behind"
    producer.start()
    assert consumer.wait(180) == 0, consumer.log()
    applied = {d["_id"] for d in client(destination)["exits"]["docs"].find()}
    assert applied == set(range(300)), f"everything up to the exit point, nothing after it: {sorted(set(range(300)) ^ applied)[:20]}"
    assert producer.terminate() == 0


def newest(source):
    return client(source)["local"]["oplog.rs"].find_one({"ns": "exits.docs"}, sort=[("$natural", -1)])["ts"]


def test_lag_is_zero_on_an_idle_source_and_status_agrees(source, destination, brokers, cli) -> None:
    topic = unique("idle")
    producer = cli(*producer_args(source, brokers, topic, "--start-position", "earliest"), name="producer").start()
    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    client(source)["idle"]["docs"].insert_many([{"_id": i} for i in range(50)])
    wait_equal(source, destination, "idle")
    quiet_since = time.monotonic()
    wait_until(lambda: metric(producer, "kafkashake_producer_lag_seconds") == 0.0
               and metric(consumer, "kafkashake_consumer_lag_seconds") == 0.0, 60, "both report no lag")
    wait_until(lambda: time.monotonic() - quiet_since > 15, 30, "a quiet spell longer than the lag alert's growth")
    for process, name in ((producer, "producer"), (consumer, "consumer")):
        lag = metric(process, f"kafkashake_{name}_lag_seconds")
        status = json.loads(get(process, "/status")[1])
        assert lag is not None and lag < 5, f"{name} lag {lag} on a source idle for 15 s"
        assert status["lag_seconds"] is not None and status["lag_seconds"] < 5
    assert producer.terminate() == 0 and consumer.terminate() == 0


def test_labelled_counters_exist_at_zero_before_their_first_event(destination, brokers, cli) -> None:
    consumer = cli(*consumer_args(destination, brokers, unique("fresh")), name="consumer").start()
    wait_until(lambda: "HTTP endpoint listening" in consumer.log(), 60, "the endpoint is up")
    text = get(consumer, "/metrics")[1]
    for series in ('kafkashake_consumer_conflicts_total{kind="duplicate_key"} 0.0',
                   'kafkashake_consumer_conflicts_total{kind="update_missing"} 0.0',
                   'kafkashake_consumer_dead_letters_total{reason="rejected"} 0.0',
                   'kafkashake_consumer_events_applied_total{op="u"} 0.0'):
        assert series in text
    assert consumer.terminate() == 0


def test_a_second_process_on_the_same_metrics_port_exits_2_naming_the_option(destination, brokers, cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        consumer = cli("consumer", "run", "--dest-uri", embedded.mongo_uri(destination), "--brokers", brokers,
                       "--topic", unique("port"), "--metrics-port", str(port), name="consumer").start()
        assert consumer.wait(60) == 2
    log = consumer.log()
    assert "--metrics-port" in log and "Traceback" not in log


def test_a_consumer_given_a_wrong_broker_address_exits_with_what_to_check(destination, cli) -> None:
    closed = embedded.free_port()
    consumer = cli("consumer", "run", "--dest-uri", embedded.mongo_uri(destination), "--brokers",
                   f"127.0.0.1:{closed}", "--topic", unique("nowhere"), "--metrics-port", "0",
                   "--startup-timeout-seconds", "5", name="consumer").start()
    assert consumer.wait(120) == 1
    log = consumer.log()
    assert "cannot reach Kafka" in log and "--brokers" in log
    assert log.count("\n") < 40, "librdkafka's retries do not flood the log"


def test_without_kafka_readiness_fails_lag_grows_and_both_recover(own_kafka, source, destination, cli) -> None:
    broker = own_kafka()
    topic = unique("no-kafka")
    producer = cli(*producer_args(source, broker.bootstrap, topic, "--start-position", "earliest",
                                  "--startup-timeout-seconds", "5"), name="producer").start()
    consumer = cli(*consumer_args(destination, broker.bootstrap, topic, "--startup-timeout-seconds", "5"),
                   name="consumer").start()
    docs = client(source)["gone"]["docs"]
    docs.insert_many([{"_id": i} for i in range(20)])
    wait_equal(source, destination, "gone")
    wait_until(lambda: metric(consumer, "kafkashake_consumer_lag_seconds") == 0.0, 60, "caught up")
    broker.stop()
    docs.insert_many([{"_id": i} for i in range(20, 40)])
    wait_until(lambda: get(consumer, "/readyz")[0] == 503 and get(producer, "/readyz")[0] == 503, 120,
               "/readyz reports Kafka out of reach")
    assert "Kafka unreachable" in get(consumer, "/readyz")[1]
    first = metric(consumer, "kafkashake_consumer_lag_seconds")
    wait_until(lambda: metric(consumer, "kafkashake_consumer_lag_seconds") >= first + 3, 60,
               "the consumer's lag grows while it cannot know more")
    assert "Kafka unreachable" in producer.log() and "Kafka unreachable" in consumer.log()
    broker.start()
    wait_equal(source, destination, "gone", timeout=180)
    wait_until(lambda: get(consumer, "/readyz")[0] == 200 and get(producer, "/readyz")[0] == 200, 120, "ready again")
    assert producer.terminate() == 0 and consumer.terminate() == 0
