"""Our topics decoded with third-party libraries only: examples/consume.py, run against a real broker."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from bson import json_util

from conftest import client, unique, wait_until
from kafkashake.demo import embedded, workload

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "consume.py"
CANONICAL = json_util.JSONOptions(json_mode=json_util.JSONMode.CANONICAL)
OWN_PACKAGES = {"kafkashake", "producer", "consumer", "schemas", "oplog", "runtime"}


def test_example_imports_no_code_of_ours() -> None:
    tree = ast.parse(EXAMPLE.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & OWN_PACKAGES
    assert {"confluent_kafka", "fastavro", "bson"} <= imported


def java_example() -> list[str]:
    """The command that runs examples/java, built by Maven (its jars cached in ~/.m2)."""
    project = EXAMPLE.parent / "java"
    classpath_file = project / "target" / "classpath.txt"
    for goals in (["package", "-DskipTests"], ["dependency:build-classpath", f"-Dmdep.outputFile={classpath_file}"]):
        built = subprocess.run(["mvn", "-q", "-B", "-f", str(project / "pom.xml"), *goals], capture_output=True,
                               text=True, timeout=900)
        assert built.returncode == 0, built.stdout + built.stderr
    jar = project / "target" / "kafkashake-consume-1.jar"
    return ["java", "-cp", f"{jar}:{classpath_file.read_text().strip()}", "io.kafkashake.example.Consume"]


@pytest.fixture(scope="module")
def java_consumer() -> list[str]:
    return java_example()


@pytest.mark.parametrize("language", ["python", "java"])
def test_every_logged_crud_event_decodes_with_third_party_libraries(source, brokers, cli, language: str,
                                                                    request: pytest.FixtureRequest) -> None:
    command = ([sys.executable, str(EXAMPLE), "--brokers", brokers, "--topic"] if language == "python"
               else [*request.getfixturevalue("java_consumer"), brokers])
    src = client(source)
    topics = {fmt: unique(f"third-{fmt}") for fmt in ("raw", "json", "bson")}
    for fmt, topic in topics.items():
        cli("producer", "run", "--source-uri", embedded.mongo_uri(source), "--brokers", brokers, "--topic", topic,
            "--format", fmt, "--name", f"task-{fmt}", "--start-position", "earliest", "--metrics-port", "0",
            name=f"producer-{fmt}").start()
    workload.run_workload(src["shop"], 400, seed=5)
    # A change larger than Kafka's default message limit travels in fragments; a field name that reads as a type
    # wrapper makes the json format carry the event as BSON.
    src["shop"]["large"].insert_one({"_id": 1, "blob": "x" * 1_500_000, "f": {"$oid": "65a1b2c3d4e5f60718293a4b"}})

    logged = set()
    for entry in src["local"]["oplog.rs"].find({"ns": {"$regex": r"^shop\."}, "op": {"$in": ["i", "u", "d"]}}):
        document_id = entry["o2"]["_id"] if entry["op"] == "u" else entry["o"]["_id"]
        logged.add((entry["ns"], entry["op"], entry["ts"].time, entry["ts"].inc,
                    json_util.dumps(document_id, json_options=CANONICAL, sort_keys=True)))
    newest = max((ts_time, ts_inc) for _, _, ts_time, ts_inc, _ in logged)

    def all_checkpointed() -> bool:
        saved = list(src["kafkashake"]["checkpoint"].find())
        return len(saved) == 3 and all((c["ts"].time, c["ts"].inc) >= newest for c in saved)

    wait_until(all_checkpointed, 60, "every producer checkpointed past the workload")

    for fmt, topic in topics.items():
        result = subprocess.run([*command, topic], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert {line["format"] for line in lines} == {fmt}
        seen = {(line["ns"], line["op"], line["ts"][0], line["ts"][1], json.dumps(line["id"], sort_keys=True))
                for line in lines}
        normalised_logged = {(ns, op, t, i, json.dumps(json.loads(ident), sort_keys=True))
                             for ns, op, t, i, ident in logged}
        assert normalised_logged <= seen, f"{fmt}: {len(normalised_logged - seen)} logged events missing"
        partitions = defaultdict(set)
        for line in lines:
            partitions[(line["ns"], json.dumps(line["id"], sort_keys=True))].add(line["partition"])
        assert all(len(found) == 1 for found in partitions.values()), f"{fmt}: a document spans partitions"
