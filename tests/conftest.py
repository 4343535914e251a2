"""Real servers on loopback for the tests: SecantusDB (through the project's launcher) and Apache Kafka."""
from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bson import json_util
from bson.binary import UuidRepresentation
from pymongo import MongoClient

import apache_kafka
from kafkashake.demo import embedded

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "oplog"
# A consumer killed with -9 holds its partitions until its session times out: 6 s (the broker's minimum) rather
# than librdkafka's 45 s default, so tests that kill consumers do not wait for it.
FAST_GROUP = ["-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=1000"]
FIXTURE_JSON = json_util.JSONOptions(document_class=dict, uuid_representation=UuidRepresentation.UNSPECIFIED)


def fixture_path(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        pytest.fail(f"fixture {name} not found in {FIXTURES}")
    return path


def load_fixture_lines(name: str) -> list[dict]:
    rows = []
    for line in fixture_path(name).read_text().splitlines():
        if line.strip():
            rows.append(json_util.loads(line, json_options=FIXTURE_JSON))
    return rows


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[embedded.EmbeddedStack]:
    with embedded.EmbeddedStack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[apache_kafka.KafkaBroker]:
    """The session's Apache Kafka broker, for tests that do not stop, kill or reconfigure it."""
    with apache_kafka.KafkaBroker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def brokers(kafka: apache_kafka.KafkaBroker) -> str:
    return kafka.bootstrap


@pytest.fixture
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., apache_kafka.KafkaBroker]]:
    """Brokers of one test's own, for tests that stop, kill or reconfigure them; started by calling the fixture."""
    started: list[apache_kafka.KafkaBroker] = []

    def start(**options: object) -> apache_kafka.KafkaBroker:
        broker = apache_kafka.KafkaBroker(tmp_path_factory.mktemp("own-kafka"), **options)  # type: ignore[arg-type]
        started.append(broker)
        return broker.start()

    yield start
    for broker in started:
        broker.kill9()


@pytest.fixture(scope="session")
def shared_mongo(stack: embedded.EmbeddedStack) -> embedded.Service:
    return stack.start_mongo("shared-mongo")


def discard(service: embedded.Service) -> None:
    """Throwaway servers are killed rather than shut down cleanly: their data is never read again."""
    if service.process.poll() is None:
        service.process.kill()
        service.process.wait(30)


@pytest.fixture
def source(stack: embedded.EmbeddedStack) -> Iterator[embedded.Service]:
    service = stack.start_mongo(f"source-{uuid.uuid4().hex[:6]}")
    yield service
    discard(service)


@pytest.fixture
def destination(stack: embedded.EmbeddedStack) -> Iterator[embedded.Service]:
    service = stack.start_mongo(f"dest-{uuid.uuid4().hex[:6]}")
    yield service
    discard(service)


def client(service: embedded.Service) -> MongoClient:
    return MongoClient(embedded.mongo_uri(service), serverSelectionTimeoutMS=20000)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def producer_args(source: embedded.Service, brokers: str, topic: str, *extra: str) -> list[str]:
    return ["producer", "run", "--source-uri", embedded.mongo_uri(source), "--brokers", brokers, "--topic", topic,
            "--metrics-port", "0", *extra]


def consumer_args(destination: embedded.Service, brokers: str, topic: str, *extra: str) -> list[str]:
    return ["consumer", "run", "--dest-uri", embedded.mongo_uri(destination), "--brokers", brokers, "--topic", topic,
            "--metrics-port", "0", *FAST_GROUP, *extra]


def checkpointed(source: embedded.Service, task: str | None = None) -> bool:
    """Whether the producer task (any task if None) has saved its first checkpoint on `source`."""
    return client(source)["kafkashake"]["checkpoint"].find_one({} if task is None else {"_id": task}) is not None


class CliProcess:
    """One `kafkashake` process with its log file; can be killed and started again with the same arguments."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self) -> "CliProcess":
        handle = self.log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "kafkashake", *self.args], stdout=handle,
                                        stderr=subprocess.STDOUT, env={**os.environ, **(self.env or {})},
                                        preexec_fn=apache_kafka.die_with_parent)
        handle.close()
        return self

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Callable[..., CliProcess]]:
    started: list[CliProcess] = []

    def make(*args: str, env: dict[str, str] | None = None, name: str = "proc") -> CliProcess:
        process = CliProcess(list(args), tmp_path / f"{name}-{len(started)}.log", env)
        started.append(process)
        return process

    yield make
    for process in started:
        if process.running:
            process.process.kill()  # type: ignore[union-attr]
            process.process.wait(30)  # type: ignore[union-attr]


def wait_until(condition: Callable[[], bool], timeout: float, message: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s: {message}")


def endpoint_url(log: str, path: str) -> str:
    """The URL of `path` on the HTTP endpoint a process announced in its log."""
    return re.search(r"url=(http://127\.0\.0\.1:\d+)/status", log).group(1) + path


def dump_json(value: object) -> str:
    return json.dumps(value, default=str)
