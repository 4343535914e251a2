"""Conflicts: writes the destination refuses because its state differs from what the event expects.
A conflict never stops replay: it is counted by kind and logged (rate-limited), and the destination
is left as it is."""
from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kafkashake.consumer.decoder import Event

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


class ConflictRecorder:
    """`--conflict-write-to db`: one document per conflict in `<conflict db>.<source namespace>`, with everything
    needed to repair by hand: the whole original event, the error, and where it came from in Kafka."""

    def __init__(self, client: Any, database: str) -> None:
        self._database = client[database]

    def record(self, conflict: Conflict) -> None:
        event = conflict.event
        self._database[event.ns].insert_one({
            "event": event.fields,
            "ns": event.ns,
            "op": event.op,
            "kind": conflict.kind,
            "code": conflict.code,
            "error": conflict.message,
            "index": conflict.index_name,
            "ts": event.fields.get("ts"),
            "kafka": {"topic": event.topic, "partition": event.partition, "offset": event.offset},
            "recorded_at": _dt.datetime.now(tz=_dt.timezone.utc),
        })


_INDEX_IN_MESSAGE = re.compile(r"index: (\S+) dup key")


def duplicate_index_name(error: Mapping[str, Any]) -> str | None:
    """The unique index a duplicate-key error names (from its message; else built from keyPattern)."""
    match = _INDEX_IN_MESSAGE.search(str(error.get("errmsg", "")))
    if match:
        return match.group(1)
    pattern = error.get("keyPattern")
    if pattern == {"_id": 1}:
        return "_id_"
    return "_".join(f"{k}_{v}" for k, v in pattern.items()) if pattern else None
