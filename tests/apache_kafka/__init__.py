"""Apache Kafka for the tests and benchmarks: a real broker in KRaft mode (one node, broker and controller in one
process) on random loopback ports, its log directory in a folder of the caller's.

The jars are Apache Kafka's own, from Maven Central: `pom.xml` beside this file pins the version, and Maven
resolves its runtime classpath once (jars cached in ~/.m2). Storage is formatted with Kafka's own storage tool,
then `kafka.Kafka` runs with a generated `server.properties`. Kafka's defaults stay as a user would have them
(`message.max.bytes` included); only what one node cannot have is set (replication factors of internal topics),
plus `group.initial.rebalance.delay.ms=0` as in the `server.properties` Kafka ships."""
from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
START_TIMEOUT_S = 180.0
PR_SET_PDEATHSIG = 1
STARTED_LINE = "Kafka Server started"
JVM_OPTIONS = ["-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
               "-Djava.awt.headless=true"]


class BrokerFailed(RuntimeError):
    pass


def die_with_parent() -> None:
    """In the child before exec: Linux kills the broker if the process that started it dies (even by kill -9), so
    no broker outlives an interrupted test run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def java_executable() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise BrokerFailed("the tests need Java 17 or later to run Apache Kafka: install a JDK or set JAVA_HOME")
    return found


def classpath() -> str:
    """The broker's runtime classpath, resolved by Maven from pom.xml once per pom version."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:16]
    target = HERE / "target"
    target.mkdir(exist_ok=True)
    cached = target / f"classpath-{digest}.txt"
    with (target / "resolve.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not cached.exists():
            partial = cached.with_suffix(".partial")
            result = subprocess.run(
                ["mvn", "-q", "-B", "-f", str(POM), "dependency:build-classpath", f"-Dmdep.outputFile={partial}"],
                capture_output=True, text=True, timeout=900)
            if result.returncode != 0:
                raise BrokerFailed(f"Maven could not resolve Apache Kafka from {POM}:\n{result.stdout}\n{result.stderr}")
            partial.rename(cached)
    return cached.read_text().strip()


@dataclass
class Listener:
    """A client listener: its name in the broker's configuration, its security protocol and its port."""

    name: str
    protocol: str
    port: int = field(default_factory=free_port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class ScramUser:
    mechanism: str
    name: str
    password: str


class KafkaBroker:
    """One Apache Kafka node. `PLAINTEXT` is always a listener (inter-broker traffic and test set-up use it);
    `listeners` adds others (SSL, SASL_SSL, ...) configured through `properties`."""

    def __init__(self, workdir: Path, listeners: list[Listener] | None = None,
                 properties: dict[str, str] | None = None, scram_users: list[ScramUser] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.listeners = [Listener("PLAINTEXT", "PLAINTEXT"), *(listeners or [])]
        self.controller_port = free_port()
        self.properties = properties or {}
        self.scram_users = scram_users or []
        self.log_path = self.workdir / "broker.log"
        self.process: subprocess.Popen | None = None
        self._cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")

    def listener(self, name: str = "PLAINTEXT") -> Listener:
        return next(listener for listener in self.listeners if listener.name == name)

    @property
    def bootstrap(self) -> str:
        return self.listener().address

    def _server_properties(self) -> Path:
        listeners = [*self.listeners, Listener("CONTROLLER", "PLAINTEXT", self.controller_port)]
        values = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listeners": ",".join(f"{l.name}://{l.address}" for l in listeners),
            "advertised.listeners": ",".join(f"{l.name}://{l.address}" for l in self.listeners),
            "listener.security.protocol.map": ",".join(f"{l.name}:{l.protocol}" for l in listeners),
            "log.dirs": str(self.workdir / "data"),
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            **self.properties,
        }
        path = self.workdir / "server.properties"
        path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
        return path

    def _log4j(self) -> Path:
        path = self.workdir / "log4j2.properties"
        path.write_text(
            "rootLogger.level=INFO\nrootLogger.appenderRef.file.ref=FILE\n"
            "appender.file.type=File\nappender.file.name=FILE\n"
            f"appender.file.fileName={self.log_path}\nappender.file.append=true\n"
            "appender.file.layout.type=PatternLayout\nappender.file.layout.pattern=[%d] %p %m (%c)%n\n"
            "logger.request.name=kafka.request.logger\nlogger.request.level=WARN\n")
        return path

    def _java(self, main: str, *args: str) -> list[str]:
        return [java_executable(), *JVM_OPTIONS, f"-Dlog4j2.configurationFile={self._log4j()}", "-cp", classpath(),
                main, *args]

    def _format(self, properties: Path) -> None:
        if (self.workdir / "data" / "meta.properties").exists():
            return
        scram = [argument for user in self.scram_users
                 for argument in ("--add-scram", f"{user.mechanism}=[name={user.name},password={user.password}]")]
        # `=`: a cluster id may begin with "-", which the tool would take for an option.
        result = subprocess.run(self._java("kafka.tools.StorageTool", "format", "--standalone",
                                           f"--cluster-id={self._cluster_id}", f"--config={properties}", *scram),
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise BrokerFailed(f"formatting the Kafka storage failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> "KafkaBroker":
        properties = self._server_properties()
        self._format(properties)
        started_before = self._log_text().count(STARTED_LINE)
        output = (self.workdir / "stdout.log").open("ab")
        self.process = subprocess.Popen(self._java("kafka.Kafka", str(properties)), stdout=output,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                        preexec_fn=die_with_parent)
        output.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._log_text().count(STARTED_LINE) <= started_before:
            if self.process.poll() is not None:
                raise BrokerFailed(f"Apache Kafka exited with {self.process.returncode} while starting:\n"
                                   f"{self._tail()}")
            if time.monotonic() > deadline:
                self.kill9()
                raise BrokerFailed(f"Apache Kafka did not start within {START_TIMEOUT_S:.0f} s:\n{self._tail()}")
            time.sleep(0.1)
        return self

    def _log_text(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return self.log_path.read_text(errors="replace")
        return ""

    def _tail(self, lines: int = 40) -> str:
        stdout = (self.workdir / "stdout.log").read_text(errors="replace") if (self.workdir / "stdout.log").exists() else ""
        return "\n".join((stdout + self._log_text()).splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        if self.running:
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(60)

    def stop(self, timeout: float = 60.0) -> None:
        if not self.running:
            return
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()

    def signal(self, signum: int) -> None:
        if self.running:
            assert self.process is not None
            os.killpg(self.process.pid, signum)

    def restart(self) -> "KafkaBroker":
        self.stop()
        return self.start()

    def __enter__(self) -> "KafkaBroker":
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.kill9()


__all__ = ["BrokerFailed", "KafkaBroker", "die_with_parent", "Listener", "ScramUser", "classpath", "free_port"]
