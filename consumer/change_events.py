"""Change-stream events in the oplog form the applier understands.

insert → `i` with the full document; update → `u` whose `o` is the `updateDescription` (applied completely:
updatedFields, removedFields, truncatedArrays, disambiguatedPaths); replace → `u` with the full document
(a true replacement); delete → `d`; DDL events → `c` commands in oplog shape (see consumer/ddl.py).
`invalidate` becomes op `invalidate`, and any other type keeps its name; the applier passes those over."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kafkashake.consumer.document_update import UPDATE_DESCRIPTION
from kafkashake.schemas.codec import UndecodableMessage

CONTEXT_FIELDS = ("lsid", "txnNumber")


def is_change_event(fields: Mapping[str, Any]) -> bool:
    return "operationType" in fields


def _namespace(event: Mapping[str, Any]) -> tuple[str, str]:
    ns = event.get("ns") or {}
    return ns.get("db", ""), ns.get("coll", "")


def _ddl_command(kind: str, db: str, coll: str, event: Mapping[str, Any]) -> dict[str, Any] | None:
    description = event.get("operationDescription") or {}
    if kind == "drop":
        return {"drop": coll}
    if kind == "dropDatabase":
        return {"dropDatabase": 1}
    if kind == "rename":
        target = event.get("to") or description.get("to") or {}
        command = {"renameCollection": f"{db}.{coll}", "to": f"{target.get('db', db)}.{target.get('coll')}"}
        if description.get("dropTarget") is not None:
            command["dropTarget"] = True
        return command
    if kind == "create":
        return {"create": coll, **{k: v for k, v in description.items() if k not in ("idIndex",)}}
    if kind == "createIndexes":
        return {"createIndexes": coll, "indexes": list(description.get("indexes") or [])}
    if kind == "dropIndexes":
        return {"dropIndexes": coll, "index": [index["name"] for index in description.get("indexes") or []]}
    if kind == "modify":
        return {"collMod": coll, **{k: v for k, v in description.items()}}
    return None


def to_oplog_form(event: Mapping[str, Any]) -> dict[str, Any]:
    kind = event["operationType"]
    db, coll = _namespace(event)
    ns = f"{db}.{coll}" if coll else db
    result: dict[str, Any] = {"ts": event.get("clusterTime"), "ns": ns, "wall": event.get("wallTime")}
    result.update({name: event[name] for name in CONTEXT_FIELDS if name in event})
    if kind == "insert":
        result.update(op="i", o=event["fullDocument"])
    elif kind == "update":
        description = event.get("updateDescription")
        if description is None:
            raise UndecodableMessage("update change event without updateDescription")
        result.update(op="u", o=dict(description), o2=event["documentKey"], o_form=UPDATE_DESCRIPTION)
    elif kind == "replace":
        result.update(op="u", o=event["fullDocument"], o2=event["documentKey"])
    elif kind == "delete":
        result.update(op="d", o=event["documentKey"])
    else:
        command = _ddl_command(kind, db, coll, event)
        if command is None:
            result.update(op=kind)
        else:
            result.update(op="c", ns=f"{db}.$cmd", o=command)
    if kind in ("insert", "update", "replace", "delete") and not isinstance(result.get("o"), Mapping):
        raise UndecodableMessage(f"{kind} change event without its document")
    return result
