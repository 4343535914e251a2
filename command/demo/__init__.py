"""`kafkashake demo`: the whole pipeline on embedded services, with live progress and a final verification."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient

from kafkashake.demo import embedded, workload

DEMO_DB = "demo"
TOPIC = "kafkashake.demo"
CATCH_UP_TIMEOUT_S = 180.0
FAST_GROUP_JOIN = ["-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500"]


def scrape(port: int) -> dict[str, float]:
    """Sum of each sample family on a /metrics endpoint (labels summed); empty if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def start_pipeline(stack: embedded.EmbeddedStack, source_uri: str, dest_uri: str, brokers: str,
                   producer_port: int, consumer_port: int) -> tuple[subprocess.Popen, subprocess.Popen]:
    base = [sys.executable, "-m", "kafkashake"]
    producer = subprocess.Popen(
        base + ["producer", "run", "--source-uri", source_uri, "--brokers", brokers, "--topic", TOPIC,
                "--start-position", "earliest", "--metrics-port", str(producer_port)],
        stdout=(stack.workdir / "producer.log").open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    consumer = subprocess.Popen(
        base + ["consumer", "run", "--brokers", brokers, "--topic", TOPIC, "--dest-uri", dest_uri,
                "--metrics-port", str(consumer_port), *FAST_GROUP_JOIN],
        stdout=(stack.workdir / "consumer.log").open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    return producer, consumer


def _progress_line(issued: int, producer: dict[str, float], consumer: dict[str, float]) -> str:
    read = producer.get("kafkashake_producer_events_read_total", 0)
    published = producer.get("kafkashake_producer_events_published_total", 0)
    applied = consumer.get("kafkashake_consumer_events_applied_total", 0)
    lag = consumer.get("kafkashake_consumer_lag_seconds", 0)
    return f"written {issued:>6} | read {read:>6.0f} | published {published:>6.0f} | applied {applied:>6.0f} | lag {lag:4.1f}s"


class _Workload:
    """The demo's writes, in a thread, with how many were issued."""

    def __init__(self, db: Any, operations: int) -> None:
        self.issued = 0
        self.done = threading.Event()
        self.failure: BaseException | None = None
        threading.Thread(target=self._drive, args=(db, operations), daemon=True).start()

    def _drive(self, db: Any, operations: int) -> None:
        try:
            self.issued = workload.run_workload(db, operations, on_progress=self._progress)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.failure = exc
        finally:
            self.done.set()

    def _progress(self, issued: int) -> None:
        self.issued = issued


def _watch(stack: embedded.EmbeddedStack, processes: list[subprocess.Popen], writes: _Workload, ports: tuple[int, int],
           source: Any, destination: Any) -> list[str] | None:
    """Show progress until the destination equals the source; the differences left (None: a process or the
    workload failed, already reported)."""
    interactive = sys.stdout.isatty()
    problems, last_print, started = ["not compared yet"], 0.0, time.monotonic()
    while time.monotonic() - started < CATCH_UP_TIMEOUT_S:
        for process, role in zip(processes, ("producer", "consumer")):
            if process.poll() is not None:
                print(f"\nthe {role} exited with code {process.returncode}; see {stack.workdir / (role + '.log')}")
                _print_tail(stack.workdir / f"{role}.log")
                return None
        line = _progress_line(writes.issued, scrape(ports[0]), scrape(ports[1]))
        if interactive:
            print("\r" + line, end="", flush=True)
        elif time.monotonic() - last_print >= 2:
            print(line, flush=True)
            last_print = time.monotonic()
        if writes.done.is_set():
            if writes.failure is not None:
                print(f"\nworkload failed: {writes.failure}")
                return None
            problems = workload.differences(source, destination, field_order=False)
            if not problems:
                break
        time.sleep(0.5)
    print("\n" + _progress_line(writes.issued, scrape(ports[0]), scrape(ports[1])))
    return problems


def _start(stack: embedded.EmbeddedStack, processes: list[subprocess.Popen]) -> tuple[str, str, tuple[int, int]]:
    print("starting embedded MongoDB (source, destination) and Kafka on loopback ...", flush=True)
    source_uri = embedded.mongo_uri(stack.start_mongo("source"))
    dest_uri = embedded.mongo_uri(stack.start_mongo("destination"))
    brokers = embedded.brokers(stack.start_kafka())
    ports = (embedded.free_port(), embedded.free_port())
    processes.extend(start_pipeline(stack, source_uri, dest_uri, brokers, *ports))
    print(f"source {source_uri}\ndestination {dest_uri}\nkafka {brokers} topic {TOPIC}\n"
          f"metrics http://127.0.0.1:{ports[0]}/metrics and http://127.0.0.1:{ports[1]}/metrics\n"
          f"logs in {stack.workdir}", flush=True)
    return source_uri, dest_uri, ports


def run_demo(operations: int, keep_running: bool = False) -> int:
    stack = embedded.EmbeddedStack()
    processes: list[subprocess.Popen] = []
    try:
        source_uri, dest_uri, ports = _start(stack, processes)
        source, destination = MongoClient(source_uri)[DEMO_DB], MongoClient(dest_uri)[DEMO_DB]
        started = time.monotonic()
        writes = _Workload(source, operations)
        problems = _watch(stack, processes, writes, ports, source, destination)
        if problems is None:
            return 1
        if problems:
            print("MISMATCH: the destination does not equal the source:")
            print("\n".join(problems[:20]))
            return 1
        if _verify(source_uri, dest_uri) != 0:
            return 1
        counts = {name: len(docs) for name, docs in workload.snapshot(destination).items()}
        print(f"OK: destination equals source (every value and BSON type) after {writes.issued} operations in "
              f"{time.monotonic() - started:.1f} s ({', '.join(f'{n}: {c} docs' for n, c in counts.items())})")
        if keep_running:
            print("still running; Ctrl-C to stop and clean up")
            while all(p.poll() is None for p in processes):
                time.sleep(1)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up")
        return 130
    except embedded.EmbeddedUnavailable as exc:
        print(f"cannot start the embedded services: {exc}")
        return 1
    finally:
        _stop(processes)
        stack.close()


def _verify(source_uri: str, dest_uri: str) -> int:
    """The final check, as a user would run it (field order aside: the embedded server does not keep it)."""
    command = [sys.executable, "-m", "kafkashake", "verify", "--source-uri", source_uri, "--dest-uri", dest_uri,
               "--filter-namespace-white", DEMO_DB, "--ignore-field-order"]
    print("$ kafkashake verify --filter-namespace-white demo --ignore-field-order", flush=True)
    return subprocess.run(command, timeout=600).returncode


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def _print_tail(path: Path, lines: int = 20) -> None:
    try:
        print("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
    except OSError:
        pass
