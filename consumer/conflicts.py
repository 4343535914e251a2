"""Conflicts: writes the destination refuses because its state differs from what the event expects.
A conflict never stops replay: it is counted by kind and logged (rate-limited), and the destination
is left as it is."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consumer.decoder import Event

DUPLICATE_KEY = "duplicate_key"
UPDATE_MISSING = "update_missing"


@dataclass(frozen=True)
class Conflict:
    kind: str
    event: Event
    code: int | None
    message: str
    index_name: str | None = None


def describe(conflict: Conflict) -> dict[str, Any]:
    event = conflict.event
    return {
        "kind": conflict.kind,
        "ns": event.ns,
        "op": event.op,
        "code": conflict.code,
        "error": conflict.message,
        "index": conflict.index_name,
        "kafka": f"{event.topic}/{event.partition}@{event.offset}",
    }
