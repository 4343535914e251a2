"""The operations kit in deploy/: every metric the dashboard and the alert rules use exists."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import generate_latest

from kafkashake.consumer.metrics import ConsumerMetrics
from kafkashake.producer.metrics import ProducerMetrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
METRIC = re.compile(r"\bkafkashake_[a-z_]+")


def exported_names() -> set[str]:
    names: set[str] = set()
    for registry in (ProducerMetrics("oplog", "raw").registry, ConsumerMetrics().registry):
        for line in generate_latest(registry).decode().splitlines():
            if line.startswith("# TYPE "):
                name, kind = line.split()[2:4]
                names.add(name)
                names |= {name + suffix for suffix in ("_total", "_bucket", "_sum", "_count")} if kind in (
                    "counter", "histogram") else set()
    return names


def referenced(texts: list[str]) -> set[str]:
    return {name for text in texts for name in METRIC.findall(text)}


def test_alert_rules_reference_existing_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = referenced(expressions)
    assert used and used <= exported_names(), used - exported_names()
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    for needed in ("LagHigh", "ResumeHeadroomLow", "Conflicts", "DeadLetters", "ProcessDown", "CheckpointStalled"):
        assert any(needed in alert for alert in alerts), needed


def test_dashboard_references_existing_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = referenced(expressions)
    assert len(used) >= 10 and used <= exported_names(), used - exported_names()
