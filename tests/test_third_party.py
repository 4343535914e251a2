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
from kafkashake import embedded, workload

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


def test_every_logged_crud_event_decodes_with_third_party_libraries(source, brokers, cli) -> None:
    src = client(source)
    topics = {fmt: unique(f"third-{fmt}") for fmt in ("raw", "json", "bson")}
    for fmt, topic in topics.items():
        cli("producer", "run", "--source-uri", embedded.mongo_uri(source), "--brokers", brokers, "--topic", topic,
            "--format", fmt, "--name", f"task-{fmt}", "--start-position", "earliest", "--metrics-port", "0",
            name=f"producer-{fmt}").start()
    workload.run_workload(src["shop"], 400, seed=5)

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
        result = subprocess.run([sys.executable, str(EXAMPLE), "--brokers", brokers, "--topic", topic,
                                 ], capture_output=True, text=True, timeout=120)
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
