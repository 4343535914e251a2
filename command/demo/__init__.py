"""`kafkashake demo`: the whole pipeline on embedded services, with live progress and a final verification."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

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


def run_demo(operations: int, keep_running: bool = False) -> int:
    interactive = sys.stdout.isatty()
    stack = embedded.EmbeddedStack()
    processes: list[subprocess.Popen] = []
    try:
        print("starting embedded MongoDB (source, destination) and Kafka on loopback ...", flush=True)
        source_service = stack.start_mongo("source")
        dest_service = stack.start_mongo("destination")
        kafka = stack.start_kafka()
        source_uri, dest_uri = embedded.mongo_uri(source_service), embedded.mongo_uri(dest_service)
        producer_port, consumer_port = embedded.free_port(), embedded.free_port()
        processes.extend(start_pipeline(stack, source_uri, dest_uri, embedded.brokers(kafka), producer_port, consumer_port))
        print(f"source {source_uri}\ndestination {dest_uri}\nkafka {embedded.brokers(kafka)} topic {TOPIC}\n"
              f"metrics http://127.0.0.1:{producer_port}/metrics and http://127.0.0.1:{consumer_port}/metrics\n"
              f"logs in {stack.workdir}", flush=True)

        source, destination = MongoClient(source_uri), MongoClient(dest_uri)
        issued = [0]
        done = threading.Event()
        failure: list[BaseException] = []

        def drive() -> None:
            try:
                issued[0] = workload.run_workload(source[DEMO_DB], operations,
                                                  on_progress=lambda n: issued.__setitem__(0, n))
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)
            finally:
                done.set()

        started = time.monotonic()
        threading.Thread(target=drive, daemon=True).start()
        problems: list[str] = ["not compared yet"]
        last_print = 0.0
        while time.monotonic() - started < CATCH_UP_TIMEOUT_S:
            for process, role in zip(processes, ("producer", "consumer")):
                if process.poll() is not None:
                    print(f"\nthe {role} exited with code {process.returncode}; see {stack.workdir / (role + '.log')}")
                    _print_tail(stack.workdir / f"{role}.log")
                    return 1
            line = _progress_line(issued[0], scrape(producer_port), scrape(consumer_port))
            if interactive:
                print("\r" + line, end="", flush=True)
            elif time.monotonic() - last_print >= 2:
                print(line, flush=True)
                last_print = time.monotonic()
            if done.is_set():
                if failure:
                    print(f"\nworkload failed: {failure[0]}")
                    return 1
                problems = workload.differences(source[DEMO_DB], destination[DEMO_DB], field_order=False)
                if not problems:
                    break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        print("\n" + _progress_line(issued[0], scrape(producer_port), scrape(consumer_port)))
        if problems:
            print("MISMATCH: the destination does not equal the source:")
            print("\n".join(problems[:20]))
            return 1
        counts = {name: len(docs) for name, docs in workload.snapshot(destination[DEMO_DB]).items()}
        print(f"OK: destination equals source (every value and BSON type) after {issued[0]} operations in {elapsed:.1f} s "
              f"({', '.join(f'{n}: {c} docs' for n, c in counts.items())})")
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
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        stack.close()


def _print_tail(path: Path, lines: int = 20) -> None:
    try:
        print("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
    except OSError:
        pass
