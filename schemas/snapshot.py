"""Snapshot events: the initial copy of existing data (`--sync-mode all|full`), in oplog form.

Every snapshot event has the top-level field `snapshot: true` (and the header `kafkashake.snapshot: true`) and
the copy's capture position as `ts`: the position streaming resumes from once the copy is done.

- documents: `{op: "i", ns, o: <document>, ts, wall, snapshot: true}`; consumers apply them as
  insert-or-replace by `_id`.
- collections and indexes: oplog-form commands on `<db>.$cmd`: `{create: <coll>, ...options}` before the
  collection's documents, `{createIndexes: <coll>, indexes: [...]}` before or after them (`--index-creation`).
  Both are DDL barriers, sent to every partition of the collection's topic.
- completion: one `{op: "n", ns: "", o: {msg: "kafkashake snapshot complete", until: <ts>}, ts, snapshot: true}`
  per partition of every topic the copy wrote to. Changes streamed after it with a `ts` at or before `until`
  overlap the copy: they may already be in the copied documents."""
from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

import bson
from bson.timestamp import Timestamp

FIELD = "snapshot"
COMPLETE_MESSAGE = "kafkashake snapshot complete"


def document_event(ts: Timestamp, ns: str, document: Any, wall: _dt.datetime) -> bytes:
    """`document` may be a RawBSONDocument; its bytes are embedded as they are."""
    return bson.encode({"op": "i", "ns": ns, "o": document, "ts": ts, "wall": wall, FIELD: True})


def command_event(ts: Timestamp, db: str, command: Mapping[str, Any], wall: _dt.datetime) -> bytes:
    return bson.encode({"op": "c", "ns": f"{db}.$cmd", "o": command, "ts": ts, "wall": wall, FIELD: True})


def completion_event(ts: Timestamp, until: Timestamp, wall: _dt.datetime) -> bytes:
    return bson.encode({"op": "n", "ns": "", "o": {"msg": COMPLETE_MESSAGE, "until": until}, "ts": ts, "wall": wall,
                        FIELD: True})


def is_snapshot(fields: Mapping[str, Any]) -> bool:
    return fields.get(FIELD) is True


def completion_until(fields: Mapping[str, Any]) -> Timestamp | None:
    """For a completion event, the newest source position the copy may reflect; None for any other event."""
    if fields.get("op") != "n" or not is_snapshot(fields):
        return None
    body = fields.get("o")
    if isinstance(body, Mapping) and body.get("msg") == COMPLETE_MESSAGE and isinstance(body.get("until"), Timestamp):
        return body["until"]
    return None
