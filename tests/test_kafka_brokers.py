"""Apache Kafka as users run it: SASL_SSL (SCRAM-SHA-512, PLAIN), mutual TLS, ACLs, a broker killed and restarted,
and a topic deleted under a running consumer."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient, NewTopic,
                                   ResourcePatternType, ResourceType)

import apache_kafka
from conftest import checkpointed, client, consumer_args, producer_args, unique, wait_until
from kafkashake.demo import workload
from kafkashake.schemas.codec import decode_events
from test_faults import Workload
from test_pipeline import read_topic, wait_equal

pytestmark = pytest.mark.e2e

KAFKA_PASSWORD = "k4fka-Secr3t-71"
JAAS = {"SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "PLAIN": ('org.apache.kafka.common.security.plain.PlainLoginModule required '
                  f'user_alice="{KAFKA_PASSWORD}";')}


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def certificates(directory: Path) -> dict[str, Path]:
    """A CA; a broker certificate for 127.0.0.1 as a PEM key store (key and certificate in one file, as Kafka
    reads it); a client certificate for mutual TLS."""
    files = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "broker", "broker-key", "client",
                                                             "client-key")}
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(files["ca-key"]), "-out",
            str(files["ca"]), "-days", "2", "-subj", "/CN=kafkashake-test-ca")
    extensions = directory / "san.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subject in (("broker", "/CN=127.0.0.1"), ("client", "/CN=kafkashake-client")):
        csr = directory / f"{name}.csr"
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(files[f"{name}-key"]), "-out", str(csr),
                "-subj", subject)
        openssl("x509", "-req", "-in", str(csr), "-CA", str(files["ca"]), "-CAkey", str(files["ca-key"]),
                "-CAcreateserial", "-out", str(files[name]), "-days", "2", "-extfile", str(extensions))
    files["broker-store"] = directory / "broker-store.pem"
    files["broker-store"].write_text(files["broker-key"].read_text() + files["broker"].read_text())
    return files


def tls_properties(files: dict[str, Path]) -> dict[str, str]:
    return {"ssl.keystore.type": "PEM", "ssl.keystore.location": str(files["broker-store"]),
            "ssl.truststore.type": "PEM", "ssl.truststore.location": str(files["ca"])}


@pytest.fixture
def secured_kafka(own_kafka, tmp_path: Path):
    """A broker with a SASL_SSL listener (SCRAM-SHA-512 and PLAIN) and an SSL listener that requires client
    certificates; yields (broker, certificate files)."""
    files = certificates(tmp_path)
    broker = own_kafka(
        listeners=[apache_kafka.Listener("SASL_SSL", "SASL_SSL"), apache_kafka.Listener("MTLS", "SSL")],
        properties={**tls_properties(files), "sasl.enabled.mechanisms": "SCRAM-SHA-512,PLAIN",
                    "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": JAAS["SCRAM-SHA-512"],
                    "listener.name.sasl_ssl.plain.sasl.jaas.config": JAAS["PLAIN"],
                    "listener.name.mtls.ssl.client.auth": "required"},
        scram_users=[apache_kafka.ScramUser("SCRAM-SHA-512", "alice", KAFKA_PASSWORD)])
    return broker, files


def sasl_flags(files: dict[str, Path], mechanism: str, password_file: Path) -> list[str]:
    return ["--kafka-security-protocol", "sasl_ssl", "--kafka-sasl-mechanism", mechanism,
            "--kafka-sasl-username", "alice", "--kafka-sasl-password-file", str(password_file),
            "--kafka-ssl-ca-location", str(files["ca"])]


def mtls_flags(files: dict[str, Path]) -> list[str]:
    return ["--kafka-security-protocol", "ssl", "--kafka-ssl-ca-location", str(files["ca"]),
            "--kafka-ssl-certificate-location", str(files["client"]), "--kafka-ssl-key-location",
            str(files["client-key"])]


@pytest.mark.parametrize("mode", ["SCRAM-SHA-512", "PLAIN", "mutual-tls"])
def test_replication_through_a_secured_listener(secured_kafka, source, destination, cli, tmp_path: Path,
                                                mode: str) -> None:
    broker, files = secured_kafka
    password_file = tmp_path / "kafka-password"
    password_file.write_text(KAFKA_PASSWORD + "\n")
    if mode == "mutual-tls":
        bootstrap, flags = broker.listener("MTLS").address, mtls_flags(files)
    else:
        bootstrap, flags = broker.listener("SASL_SSL").address, sasl_flags(files, mode, password_file)
    topic = unique("secured")
    producer = cli(*producer_args(source, bootstrap, topic, "--start-position", "earliest", *flags),
                   name="producer").start()
    consumer = cli(*consumer_args(destination, bootstrap, topic, *flags), name="consumer").start()
    workload.run_workload(client(source)["shop"], 200, seed=11)
    wait_equal(source, destination, "shop")
    shown = subprocess.run([sys.executable, "-m", "kafkashake", "inspect", "--brokers", bootstrap, "--topic", topic,
                            "--limit", "3", *flags], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and '"ns": "shop.' in shown.stdout, shown.stderr
    assert producer.terminate() == 0 and consumer.terminate() == 0
    for process in (producer, consumer):
        assert KAFKA_PASSWORD not in process.log()


def test_a_wrong_kafka_password_stops_with_what_to_check(secured_kafka, source, destination, cli,
                                                         tmp_path: Path) -> None:
    broker, files = secured_kafka
    wrong = tmp_path / "wrong-password"
    wrong.write_text("Wr0ng-" + KAFKA_PASSWORD)
    bootstrap = broker.listener("SASL_SSL").address
    flags = sasl_flags(files, "SCRAM-SHA-512", wrong)
    producer = cli(*producer_args(source, bootstrap, unique("denied"), "--startup-timeout-seconds", "10", *flags),
                   name="producer").start()
    consumer = cli(*consumer_args(destination, bootstrap, unique("denied"), "--startup-timeout-seconds", "10",
                                  *flags), name="consumer").start()
    for process in (producer, consumer):
        assert process.wait(120) == 1, process.log()
        log = process.log()
        assert "authenticat" in log and "password" in log, log[-1500:]
        assert "Wr0ng-" + KAFKA_PASSWORD not in log


@pytest.fixture
def kafka_with_acls(own_kafka):
    """A broker with the standard authorizer. The PLAINTEXT listener (test set-up, inter-broker) is a super user;
    clients use SASL_PLAINTEXT as alice, who may do only what the test grants."""
    broker = own_kafka(
        listeners=[apache_kafka.Listener("SASL_PLAINTEXT", "SASL_PLAINTEXT")],
        properties={"authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                    "super.users": "User:ANONYMOUS", "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                    "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": JAAS["SCRAM-SHA-512"]},
        scram_users=[apache_kafka.ScramUser("SCRAM-SHA-512", "alice", KAFKA_PASSWORD)])
    return broker


def grant(broker, *bindings: tuple[ResourceType, str, AclOperation]) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    acls = [AclBinding(kind, name, ResourcePatternType.LITERAL, "User:alice", "*", operation, AclPermissionType.ALLOW)
            for kind, name, operation in bindings]
    for future in admin.create_acls(acls).values():
        future.result(30)


def create_topic(broker, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 8, 1)])[topic].result(30)


def test_missing_permissions_stop_with_the_permission_named(kafka_with_acls, source, destination, cli,
                                                            tmp_path: Path) -> None:
    broker = kafka_with_acls
    password_file = tmp_path / "kafka-password"
    password_file.write_text(KAFKA_PASSWORD)
    flags = ["--kafka-security-protocol", "sasl_plaintext", "--kafka-sasl-mechanism", "SCRAM-SHA-512",
             "--kafka-sasl-username", "alice", "--kafka-sasl-password-file", str(password_file)]
    bootstrap = broker.listener("SASL_PLAINTEXT").address
    topic, group = unique("acl"), unique("acl-group")
    create_topic(broker, topic)
    grant(broker, (ResourceType.TOPIC, topic, AclOperation.DESCRIBE))

    producer = cli(*producer_args(source, bootstrap, topic, "--start-position", "earliest", *flags),
                   name="producer").start()
    client(source)["acl"]["docs"].insert_one({"_id": 1})
    assert producer.wait(120) == 1
    assert "Write" in producer.log() and topic in producer.log(), producer.log()[-1500:]

    consumer = cli(*consumer_args(destination, bootstrap, topic, "--group", group, *flags),
                   name="consumer").start()
    assert consumer.wait(120) == 1
    assert "group" in consumer.log() and group in consumer.log(), consumer.log()[-1500:]

    grant(broker, (ResourceType.GROUP, group, AclOperation.READ))
    reader = cli(*consumer_args(destination, bootstrap, topic, "--group", group, *flags), name="reader").start()
    assert reader.wait(120) == 1
    assert "Read" in reader.log() and topic in reader.log(), reader.log()[-1500:]


def test_broker_killed_and_restarted_under_running_processes(own_kafka, source, destination, cli) -> None:
    broker = own_kafka()
    topic = unique("restarted")
    producer = cli(*producer_args(source, broker.bootstrap, topic, "--start-position", "earliest"),
                   name="producer").start()
    consumer = cli(*consumer_args(destination, broker.bootstrap, topic), name="consumer").start()
    wait_until(lambda: checkpointed(source), 60, "first checkpoint")
    db = client(source)["restart"]
    running = Workload(db).start(1500, seed=21)
    wait_until(lambda: client(destination)["restart"]["users"].estimated_document_count() > 20, 120,
               "the workload is flowing")
    broker.kill9()
    time.sleep(10)  # the scenario: the broker stays away 10 s
    broker.start()
    running.join()
    wait_equal(source, destination, "restart", timeout=300)
    assert producer.running and consumer.running
    assert producer.terminate() == 0 and consumer.terminate() == 0
    saved = client(source)["kafkashake"]["checkpoint"].find_one()["ts"]
    published = {event["ts"] for message in read_topic(broker.bootstrap, topic) for event in
                 decode_events(message.value())}
    acknowledged = {entry["ts"] for entry in client(source)["local"]["oplog.rs"].find(
        {"ns": {"$regex": r"^restart\."}, "op": {"$in": ["i", "u", "d"]}, "ts": {"$lte": saved}})}
    assert acknowledged <= published, f"{len(acknowledged - published)} acknowledged changes missing from the topic"


def test_topic_deleted_under_a_running_consumer_and_recreated(source, destination, brokers, cli) -> None:
    topic = unique("deleted")
    docs = client(source)["gone"]["docs"]
    producer = cli(*producer_args(source, brokers, topic, "--name", "before", "--start-position", "earliest"),
                   name="producer").start()
    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    docs.insert_many([{"_id": i, "v": 1} for i in range(200)])
    wait_equal(source, destination, "gone")
    assert producer.terminate() == 0
    admin = AdminClient({"bootstrap.servers": brokers})
    admin.delete_topics([topic])[topic].result(60)
    wait_until(lambda: "does not exist" in consumer.log() or "revoked" in consumer.log()
               or topic not in admin.list_topics(timeout=10).topics, 60, "the topic is gone")
    docs.update_many({}, {"$set": {"v": 2}})
    resync = cli(*producer_args(source, brokers, topic, "--name", "after", "--sync-mode", "all"),
                 name="producer-again").start()
    wait_equal(source, destination, "gone", timeout=180)
    assert consumer.running, "the consumer carried on through the deletion"
    wait_until(lambda: "deleted and re-created" in consumer.log(), 60, "the consumer says the topic is a new one")
    assert resync.terminate() == 0 and consumer.terminate() == 0
