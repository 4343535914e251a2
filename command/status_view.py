"""`kafkashake status`: a live terminal view of one or more kafkashake processes, read from their /status."""
from __future__ import annotations

import json
import sys
import time
import urllib.request
from typing import Any, TextIO


def fetch(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/status", timeout=3) as response:
            return json.loads(response.read())
    except (OSError, ValueError) as exc:
        return {"error": str(exc)}


def _time(position: dict[str, Any] | None) -> str:
    return position["time"] if position else "-"


def render(url: str, status: dict[str, Any]) -> list[str]:
    if "error" in status:
        return [f"{url}  UNREACHABLE: {status['error']}"]
    counters, rates = status.get("counters", {}), status.get("rates_per_second", {})
    positions = status.get("positions", {})
    lag = status.get("lag_seconds")
    head = f"{url}  {status['role']}  {'PAUSED' if status.get('paused') else 'running'}  lag {lag if lag is not None else '-'} s"
    if status["role"] == "producer":
        lines = [head,
                 f"  read {_time(positions.get('read'))}  checkpointed {_time(positions.get('checkpointed'))}",
                 f"  read {counters.get('events_read', 0):.0f} ({rates.get('events_read', 0)}/s)  "
                 f"published {counters.get('events_published', 0):.0f} ({rates.get('events_published', 0)}/s)  "
                 f"filtered {counters.get('events_filtered', 0):.0f}  delivery errors "
                 f"{counters.get('delivery_errors', 0):.0f}"]
    else:
        lines = [head,
                 f"  applied up to {_time(positions.get('applied'))}  delay {status.get('target_delay')} s  "
                 f"paused partitions {len(status.get('partitions_paused', []))}",
                 f"  consumed {counters.get('messages_consumed', 0):.0f} ({rates.get('messages_consumed', 0)}/s)  "
                 f"applied {counters.get('events_applied', 0):.0f} ({rates.get('events_applied', 0)}/s)  "
                 f"conflicts {counters.get('conflicts', 0):.0f}  dead letters {counters.get('dead_letters', 0):.0f}"]
    if status.get("exit_at"):
        lines.append(f"  exit at {status['exit_at']['time']}")
    return lines


def run_status(urls: list[str], once: bool, out: TextIO = sys.stdout) -> int:
    interactive = out.isatty() and not once
    while True:
        lines: list[str] = []
        for url in urls:
            lines += render(url, fetch(url))
        if interactive:
            out.write("\x1b[2J\x1b[H")
        out.write("\n".join(lines) + "\n")
        out.flush()
        if once:
            return 1 if any("UNREACHABLE" in line for line in lines) else 0
        time.sleep(1)
