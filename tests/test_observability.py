"""Metrics, health, status and control on real processes."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import FAST_GROUP, checkpointed, client, unique, wait_until
from kafkashake.demo import embedded, workload

pytestmark = pytest.mark.e2e
TOKEN = "s3cret-control-token"


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except urllib.error.URLError as error:  # not listening yet: a process still starting on a busy machine
        return 0, str(error.reason)


def post(port: int, body: dict, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/control", data=json.dumps(body).encode(), method="POST")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def metrics(port: int) -> dict[str, float]:
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(get(port, "/metrics")[1]):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def test_metrics_status_and_control(source, destination, brokers, cli) -> None:
    topic = unique("obs")
    src, dst = client(source), client(destination)
    producer_port, consumer_port = embedded.free_port(), embedded.free_port()
    producer = cli("producer", "run", "--source-uri", embedded.mongo_uri(source), "--brokers", brokers, "--topic", topic,
                   "--metrics-port", str(producer_port), name="producer").start()
    consumer = cli("consumer", "run", "--dest-uri", embedded.mongo_uri(destination), "--brokers", brokers, "--topic",
                   topic, "--metrics-port", str(consumer_port), *FAST_GROUP, env={"KAFKASHAKE_CONTROL_TOKEN": TOKEN},
                   name="consumer").start()
    wait_until(lambda: checkpointed(source), 30, "first checkpoint")
    wait_until(lambda: get(consumer_port, "/readyz")[0] == 200 and get(producer_port, "/readyz")[0] == 200, 30,
               "both ready")
    assert get(producer_port, "/healthz")[0] == 200 and get(consumer_port, "/healthz")[0] == 200

    workload.run_workload(src["shop"], 300, seed=4)
    logged = src["local"]["oplog.rs"].count_documents({"ns": {"$regex": r"^shop\."}, "op": {"$in": ["i", "u", "d"]}})
    wait_until(lambda: metrics(consumer_port).get("kafkashake_consumer_events_applied_total", 0) >= logged, 60,
               "the consumer applied everything")
    consumer_metrics, producer_metrics = metrics(consumer_port), metrics(producer_port)
    assert consumer_metrics["kafkashake_consumer_events_applied_total"] == logged
    assert producer_metrics["kafkashake_producer_events_published_total"] == logged
    src["shop"]["marker"].insert_one({"_id": "caught-up"})  # once caught up, a fresh change shows the lag floor
    wait_until(lambda: dst["shop"]["marker"].find_one() is not None, 30, "marker applied", interval=0.1)
    lag = metrics(consumer_port)["kafkashake_consumer_lag_seconds"]
    assert lag < 5, f"lag falls to near zero once caught up, got {lag}"
    logged += 1
    assert producer_metrics["kafkashake_producer_events_read_total"] >= logged
    assert producer_metrics["kafkashake_producer_resume_headroom_seconds"] >= 0
    assert "kafkashake_build_info" in producer_metrics and "kafkashake_build_info" in consumer_metrics
    wait_until(lambda: "kafkashake_consumer_kafka_lag_messages" in metrics(consumer_port), 10, "Kafka lag measured")

    status = json.loads(get(consumer_port, "/status")[1])
    assert status["role"] == "consumer" and status["counters"]["events_applied"] == logged
    assert status["config"]["process"]["control_token"] == "***"
    assert json.loads(get(producer_port, "/status")[1])["positions"]["checkpointed"]["ts"]
    for port in (producer_port, consumer_port):
        assert TOKEN not in get(port, "/status")[1]

    assert post(consumer_port, {"target_delay": 2})[0] == 401, "no token, no control"
    assert post(consumer_port, {"target_delay": 2}, "wrong")[0] == 401
    assert post(producer_port, {"pause": True}, TOKEN)[0] == 403, "control disabled without --control-token"
    assert post(consumer_port, {"target_delay": -1}, TOKEN)[0] == 400
    code, reply = post(consumer_port, {"target_delay": 2}, TOKEN)
    assert code == 200 and reply["target_delay"] == 2
    wait_until(lambda: metrics(consumer_port)["kafkashake_consumer_delay_seconds"] == 2, 10, "delay in force")
    src["shop"]["late"].insert_one({"_id": 1})
    written = src["local"]["oplog.rs"].find_one({"ns": "shop.late"})["wall"].replace(tzinfo=dt.timezone.utc).timestamp()
    wait_until(lambda: dst["shop"]["late"].find_one() is not None, 20, "delayed event applied", interval=0.05)
    assert time.time() >= written + 2, "the new delay took effect at once"

    assert post(consumer_port, {"target_delay": 0, "pause": True}, TOKEN)[0] == 200
    wait_until(lambda: json.loads(get(consumer_port, "/status")[1])["paused"] is True, 10, "paused")
    src["shop"]["late"].insert_one({"_id": 2})
    time.sleep(3)
    assert dst["shop"]["late"].find_one({"_id": 2}) is None, "paused"
    assert json.loads(get(consumer_port, "/status")[1])["paused"] is True
    assert post(consumer_port, {"resume": True}, TOKEN)[0] == 200
    wait_until(lambda: dst["shop"]["late"].find_one({"_id": 2}) is not None, 20, "resumed")

    view = subprocess.run([sys.executable, "-m", "kafkashake", "status", "--once", "--url",
                           f"http://127.0.0.1:{producer_port}", "--url", f"http://127.0.0.1:{consumer_port}"],
                          capture_output=True, text=True, timeout=60)
    assert view.returncode == 0 and "producer" in view.stdout and "consumer" in view.stdout
    assert producer.terminate() == 0 and consumer.terminate() == 0
    assert TOKEN not in consumer.log()
