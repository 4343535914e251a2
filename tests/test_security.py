"""Credentials: MongoDB SCRAM authentication and TLS (certificates made here), secrets read from files and never
shown, first-class Kafka security flags, and configuration that cannot work refused at start-up."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from pymongo import MongoClient

from conftest import FAST_GROUP, endpoint_url, unique, wait_until
from kafkashake.runtime.settings import Invalid, KafkaSettings, SaslMechanism, Secret, SecurityProtocol
from kafkashake.demo import embedded, workload

PASSWORD = "s3cret-Pw-9f2"


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for 127.0.0.1/localhost signed by it."""
    ca_key, ca, key, csr, cert = (directory / name for name in ("ca.key", "ca.pem", "server.key", "server.csr",
                                                                "server.pem"))
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=kafkashake-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    extensions = directory / "san.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
        "-days", "2", "-extfile", str(extensions))
    return ca, cert, key


@pytest.fixture
def secured_mongo(stack: embedded.EmbeddedStack, tmp_path: Path):
    """SecantusDB with SCRAM authentication and TLS; yields (service, CA file)."""
    name = unique("secured")
    data_dir = stack.workdir / f"{name}-data"
    port = embedded.free_port()
    plain = stack.start_mongo(name, port=port, data_dir=data_dir)
    MongoClient(embedded.mongo_uri(plain)).admin.command("createUser", "shake", pwd=PASSWORD, roles=["root"])
    plain.stop()
    ca, cert, key = make_certificates(tmp_path)
    secured = stack.start_mongo(name + "-tls", "--auth", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                                port=port, data_dir=data_dir)
    yield secured, ca
    secured.stop()


def secured_uri(service: embedded.Service, ca: Path, password: str = PASSWORD) -> str:
    return (f"mongodb://shake:{password}@127.0.0.1:{service.port}/?directConnection=true&authSource=admin"
            f"&tls=true&tlsCAFile={ca}")


def test_auth_and_tls_with_connection_strings_from_files(secured_mongo, brokers, cli, tmp_path: Path) -> None:
    service, ca = secured_mongo
    uri_file = tmp_path / "mongo-uri"
    uri_file.write_text(secured_uri(service, ca) + "\n")
    uri_file.chmod(0o600)
    src = MongoClient(secured_uri(service, ca))
    plaintext = MongoClient(embedded.mongo_uri(service), serverSelectionTimeoutMS=2000)
    with pytest.raises(Exception):
        plaintext.admin.command("ping")  # TLS is required

    topic = unique("secure")
    producer = cli("producer", "run", "--source-uri-file", str(uri_file), "--brokers", brokers, "--topic", topic,
                   "--metrics-port", "0", "--filter-namespace-white", "plain", "--control-token", "tok-" + PASSWORD,
                   name="producer").start()
    wait_until(lambda: src["kafkashake"]["checkpoint"].find_one() is not None or not producer.running, 60,
               "producer checkpoint")
    # Same server as destination: replayed under another name.
    consumer = cli("consumer", "run", "--dest-uri-file", str(uri_file), "--brokers", brokers, "--topic", topic,
                   "--metrics-port", "0", "--transform-namespace", "plain:copied", *FAST_GROUP,
                   name="consumer").start()
    workload.run_workload(src["plain"], 150, transactions=False)

    def replicated() -> bool:
        return not workload.differences(src["plain"], src["copied"], field_order=False)

    wait_until(replicated, 90, "replicated through an authenticated TLS connection")
    for process in (producer, consumer):
        status_url = endpoint_url(process.log(), "/status")
        status = urllib.request.urlopen(status_url, timeout=10).read().decode()
        assert PASSWORD not in status and json.loads(status)["role"] in ("producer", "consumer")
        assert process.terminate() == 0, process.log()
        assert PASSWORD not in process.log()


def test_wrong_password_stops_with_a_clear_message_and_no_secret(secured_mongo, brokers, cli) -> None:
    service, ca = secured_mongo
    wrong = "Wr0ng-" + PASSWORD
    producer = cli("producer", "run", "--source-uri", secured_uri(service, ca, wrong), "--brokers", brokers,
                   "--topic", unique("denied"), "--metrics-port", "0", name="producer").start()
    assert producer.wait(90) == 1
    log = producer.log()
    assert "Check the user, password and authSource" in log, log[-2000:]
    assert wrong not in log


def test_kafka_security_flags_become_librdkafka_properties(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = KafkaSettings("h:1", SecurityProtocol.SASL_SSL, SaslMechanism.SCRAM_SHA_512, "shake",
                             Secret("kafka-" + PASSWORD), ca, properties={"linger.ms": "7"})
    settings.check()
    assert settings.librdkafka() == {"security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-512",
                                     "sasl.username": "shake", "sasl.password": "kafka-" + PASSWORD,
                                     "ssl.ca.location": str(ca), "linger.ms": "7"}
    assert PASSWORD not in repr(settings), "a Secret never prints its value"
    plain = KafkaSettings("h:1", SecurityProtocol.SASL_PLAINTEXT, SaslMechanism.PLAIN, "u", Secret("p"))
    assert plain.librdkafka()["sasl.mechanism"] == "PLAIN" and plain.librdkafka()["security.protocol"] == "sasl_plaintext"
    with pytest.raises(Invalid, match="needs --kafka-sasl-mechanism"):
        KafkaSettings("h:1", SecurityProtocol.SASL_SSL, None, "u", Secret("p")).check()
    with pytest.raises(Invalid, match="needs --kafka-security-protocol ssl"):
        KafkaSettings("h:1", ssl_ca_location=ca).check()


@pytest.mark.parametrize("args, complaint", [
    (["producer", "run", "--brokers", "h:9092", "--topic", "t", "--source-uri", "mongodb://h/", "--target-delay", "5"],
     "No such option"),
    (["consumer", "run", "--brokers", "h:9092", "--topic", "t"], "--dest-uri"),
    (["producer", "run", "--brokers", "h:9092", "--topic", "t", "--source-uri", "mongodb://h/",
      "--source-uri-file", "/nonexistent"], "not both"),
    (["consumer", "run", "--brokers", "h:9092", "--topic", "t", "--dest-uri-file", "/nonexistent/uri"],
     "cannot read"),
    (["producer", "run", "--brokers", "h:9092", "--topic", "t", "--source-uri", "mongodb://h/",
      "--kafka-sasl-username", "u"], "SASL options need"),
    (["producer", "run", "--brokers", "h:9092", "--topic", "t", "--source-uri", "mongodb://h/", "--sync-mode", "all",
      "--start-position", "earliest"], "only applies to --sync-mode incr"),
])
def test_configuration_that_cannot_work_is_refused_at_start(args: list[str], complaint: str) -> None:
    result = subprocess.run([sys.executable, "-m", "kafkashake", *args], capture_output=True, text=True, timeout=60,
                            env={"COLUMNS": "200", "PATH": ""})
    assert result.returncode == 2, result
    assert complaint in " ".join((result.stderr + result.stdout).split()), result.stderr
