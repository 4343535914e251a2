"""Applying events to the destination as ordered bulk writes, one run at a time.

Within a batch, events are grouped into runs. A run's writes go out per namespace as one ordered
`bulk_write`, so operations on one document keep their order. Updates are computed in memory from the
document as it stands (fetched once per run with `$in`) and written as replacements: this reproduces
mongod's diff semantics exactly and shows whether the document existed. An update on a document that an
insert earlier in the same run touched closes the run first, because the insert's outcome is not yet known."""
from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bson
from pymongo import DeleteOne, InsertOne, MongoClient, ReplaceOne
from pymongo.errors import BulkWriteError, OperationFailure

from consumer.conflicts import DUPLICATE_KEY, UPDATE_MISSING, Conflict
from consumer.decoder import Event
from consumer.ddl import apply_command, command_name
from consumer.document_update import UpdateFormatError, apply_update
from oplog.entry import is_internal_namespace
from runtime.errors import FatalError
from runtime.retry import is_transient
from schemas.codec import EVENT_CODEC_OPTIONS

log = logging.getLogger("kafkashake.consumer.applier")

DUPLICATE_KEY_CODES = frozenset({11000, 11001})
PASSED_OVER_REASONS = {"n": "noop", "c": "command", "invalidate": "invalidate", "kafkashake.gap": "history_gap"}
_ABSENT: Any = object()


def identity(value: Any) -> bytes:
    """A hashable identity for any BSON `_id` value."""
    return bson.encode({"": value})


@dataclass
class ApplyReport:
    applied: Counter = field(default_factory=Counter)
    passed_over: Counter = field(default_factory=Counter)
    conflicts: list[Conflict] = field(default_factory=list)


@dataclass(slots=True)
class _Write:
    event: Event
    document_id: Any
    key: bytes
    request: Any = None


class _Run:
    def __init__(self) -> None:
        self.writes: dict[str, list[_Write]] = defaultdict(list)
        self.inserted: set[tuple[str, bytes]] = set()

    def __bool__(self) -> bool:
        return bool(self.writes)


class Applier:
    def __init__(
        self,
        client: MongoClient,
        private_databases: frozenset[str],
        on_conflict: Callable[[Conflict], None] = lambda conflict: None,
        ddl: bool = False,
    ) -> None:
        self._client = client
        self._private = private_databases
        self._on_conflict = on_conflict
        self._ddl = ddl

    def _collection(self, ns: str):  # type: ignore[no-untyped-def]
        db, _, coll = ns.partition(".")
        return self._client.get_database(db, codec_options=EVENT_CODEC_OPTIONS)[coll]

    def apply(self, events: list[Event]) -> ApplyReport:
        report = ApplyReport()
        run = _Run()
        for event in events:
            op = event.op
            if op == "c" and self._ddl and not is_internal_namespace(event.ns, self._private):
                if run:
                    self._flush(run, report)
                    run = _Run()
                self._apply_command(event, report)
                continue
            if op not in ("i", "u", "d"):
                reason = PASSED_OVER_REASONS.get(op, "unknown_op")
                report.passed_over[reason] += 1
                if reason == "unknown_op":
                    log.warning("passing over an event of unknown op", extra={"op": op, "ns": event.ns})
                elif reason == "invalidate":
                    log.info("change stream invalidate event passed over", extra={"ns": event.ns})
                elif reason == "history_gap":
                    log.error("the producer lost change-stream history: changes before this point are missing "
                              "from the destination", extra={"kafka": _where(event)})
                continue
            if is_internal_namespace(event.ns, self._private):
                report.passed_over["internal_namespace"] += 1
                continue
            fields = event.fields
            document_id = fields["o2"]["_id"] if op == "u" else fields["o"]["_id"]
            write = _Write(event, document_id, identity(document_id))
            if op == "u" and (event.ns, write.key) in run.inserted:
                self._flush(run, report)
                run = _Run()
            if op == "i":
                run.inserted.add((event.ns, write.key))
            run.writes[event.ns].append(write)
        if run:
            self._flush(run, report)
        return report

    def _apply_command(self, event: Event, report: ApplyReport) -> None:
        command = event.fields["o"]
        try:
            applied = apply_command(self._client, event.ns, command)
        except OperationFailure as exc:
            if is_transient(exc):
                raise
            raise FatalError(
                f"the destination rejected the DDL {dict(command)} at {_where(event)}: {exc}. Replay stops here so "
                "nothing is skipped; fix the destination and restart"
            ) from exc
        if applied:
            report.applied["c"] += 1
            log.info("DDL applied", extra={"ns": event.ns, "command": command_name(command)})
        else:
            report.passed_over["command"] += 1

    def _flush(self, run: _Run, report: ApplyReport) -> None:
        for ns, writes in run.writes.items():
            collection = self._collection(ns)
            self._prepare_updates(collection, writes, report)
            self._execute(collection, [w for w in writes if w.request is not None], report)

    def _prepare_updates(self, collection, writes: list[_Write], report: ApplyReport) -> None:  # type: ignore[no-untyped-def]
        update_ids = {w.key: w.document_id for w in writes if w.event.op == "u"}
        for w in writes:
            if w.event.op == "i":
                w.request = InsertOne(w.event.fields["o"])
            elif w.event.op == "d":
                w.request = DeleteOne({"_id": w.document_id})
        if not update_ids:
            return
        state: dict[bytes, Any] = {
            identity(document["_id"]): document for document in collection.find({"_id": {"$in": list(update_ids.values())}})
        }
        for w in writes:
            op = w.event.op
            if op == "d":
                state[w.key] = _ABSENT
            elif op == "u":
                current = state.get(w.key, _ABSENT)
                if current is _ABSENT:
                    self._conflict(report, Conflict(UPDATE_MISSING, w.event, None, "no document matches the update's _id"))
                    continue
                try:
                    updated = apply_update(current, w.event.fields["o"])
                except UpdateFormatError as exc:
                    raise FatalError(f"cannot apply update at {_where(w.event)}: {exc}") from exc
                state[w.key] = updated
                w.request = ReplaceOne({"_id": w.document_id}, updated)

    def _execute(self, collection, writes: list[_Write], report: ApplyReport) -> None:  # type: ignore[no-untyped-def]
        start = 0
        while start < len(writes):
            batch = writes[start:]
            try:
                collection.bulk_write([w.request for w in batch], ordered=True)
            except BulkWriteError as exc:
                first = exc.details["writeErrors"][0]
                failed = batch[first["index"]]
                for w in batch[: first["index"]]:
                    report.applied[w.event.op] += 1
                if first.get("code") not in DUPLICATE_KEY_CODES:
                    raise FatalError(
                        f"the destination rejected the event at {_where(failed.event)} on {failed.event.ns}: "
                        f"{first.get('errmsg')} (code {first.get('code')}). Replay stops here so nothing is skipped; "
                        "fix the destination (validator, index, permissions) and restart"
                    ) from exc
                index_name = (first.get("keyPattern") and "_".join(f"{k}_{v}" for k, v in first["keyPattern"].items())) or None
                self._conflict(
                    report, Conflict(DUPLICATE_KEY, failed.event, first.get("code"), first.get("errmsg", ""), index_name)
                )
                start += first["index"] + 1
                continue
            for w in batch:
                report.applied[w.event.op] += 1
            return

    def _conflict(self, report: ApplyReport, conflict: Conflict) -> None:
        report.conflicts.append(conflict)
        self._on_conflict(conflict)


def _where(event: Event) -> str:
    return f"{event.topic}/{event.partition}@{event.offset}"
