"""Applying events to the destination as ordered bulk writes, one run at a time.

Within a batch, events are grouped into runs. A run's writes go out per namespace as one ordered
`bulk_write`, so operations on one document keep their order. Updates are computed in memory from the
document as it stands (fetched once per run with `$in`, in chunks) and written as replacements: this reproduces
mongod's diff semantics exactly and shows whether the document existed. An update on a document that an
insert earlier in the same run touched closes the run first, because the insert's outcome is not yet known.

Changes of collections with a unique index besides `_id` come in source order (consumer/sequencer.py). Changes
that share a source time (a transaction's) may still come in another order than the source applied them: a write
such a unique index refuses is tried again after the others of its source time, and only a second refusal is a
conflict."""
from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pymongo import DeleteOne, InsertOne, MongoClient, ReplaceOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from kafkashake.consumer.conflicts import DUPLICATE_KEY, UPDATE_MISSING, Conflict
from kafkashake.consumer.dead_letters import REJECTED, UNAPPLICABLE_UPDATE, UNKNOWN_OP
from kafkashake.consumer.decoder import Event
from kafkashake.consumer.ddl import apply_command, command_name
from kafkashake.consumer.settings import ReplayPolicy
from kafkashake.consumer.document_update import UpdateFormatError, apply_update
from kafkashake.oplog.entry import CHANGE_STREAM_DDL, is_internal_namespace
from kafkashake.runtime.errors import FatalError
from kafkashake.runtime.retry import is_transient
from kafkashake.schemas.codec import EVENT_CODEC_OPTIONS
from kafkashake.schemas.partitioning import key_text
from kafkashake.schemas.snapshot import is_snapshot

log = logging.getLogger("kafkashake.consumer.applier")

DUPLICATE_KEY_CODES = frozenset({11000, 11001})
PASSED_OVER_REASONS = {"n": "noop", "c": "command", "invalidate": "invalidate", "kafkashake.gap": "history_gap",
                       **{kind: "command" for kind in CHANGE_STREAM_DDL}}
_ABSENT: Any = object()
# Documents are fetched for updates this many _ids per query: bounds each reply, and SecantusDB's `$in` costs
# grow with the list (2,000 ids in one query: 3.1 s; in chunks of 400: 0.63 s, of 100: 0.24 s, of 50: 0.18 s).
FETCH_CHUNK_IDS = 50


def identity(value: Any) -> str:
    """A hashable identity for any BSON `_id` value, equal for values MongoDB holds to be one `_id`."""
    return key_text(value)


@dataclass
class Rejection:
    event: Event
    reason: str
    error: str


@dataclass
class ApplyReport:
    applied: Counter = field(default_factory=Counter)
    passed_over: Counter = field(default_factory=Counter)
    conflicts: list[Conflict] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


@dataclass(slots=True)
class _Write:
    event: Event
    document_id: Any
    key: str
    request: Any = None
    replaces_on_duplicate: bool = False
    tried_again: bool = False


class _Run:
    def __init__(self) -> None:
        self.writes: dict[str, list[_Write]] = defaultdict(list)
        self.inserted: set[tuple[str, str]] = set()

    def __bool__(self) -> bool:
        return bool(self.writes)


class Applier:
    def __init__(
        self,
        client: MongoClient,
        private_databases: frozenset[str],
        policy: ReplayPolicy = ReplayPolicy(),
        dead_letters: bool = True,
    ) -> None:
        self._client = client
        self._private = private_databases
        self._policy = policy
        self._dead_letters = dead_letters

    def _reject(self, report: ApplyReport, event: Event, reason: str, error: str) -> None:
        """An event that can never be applied: reported for the dead-letter topic, or replay stops."""
        if not self._dead_letters:
            raise FatalError(
                f"{error} (event at {_where(event)} on {event.ns}). Replay stops here so nothing is skipped; fix the "
                "destination (validator, index, permissions) and restart, or run with --on-error dlq"
            )
        report.rejected.append(Rejection(event, reason, error))

    def _collection(self, ns: str):  # type: ignore[no-untyped-def]
        db, _, coll = ns.partition(".")
        return self._client.get_database(db, codec_options=EVENT_CODEC_OPTIONS)[coll]

    def apply(self, events: list[Event]) -> ApplyReport:
        report = ApplyReport()
        run = _Run()
        policy = self._policy
        for event in events:
            op = event.op
            if policy.namespaces and not self._allowed(event):
                report.passed_over["filtered"] += 1
                continue
            if op == "c" and (policy.ddl or is_snapshot(event.fields)) and not is_internal_namespace(event.ns, self._private):
                if run:
                    self._flush(run, report)
                    run = _Run()
                self._apply_command(event, report)
                continue
            if op not in ("i", "u", "d"):
                reason = PASSED_OVER_REASONS.get(op)
                if reason is None:
                    self._reject(report, event, UNKNOWN_OP, f"unknown operation type {op!r}")
                    continue
                report.passed_over[reason] += 1
                if reason == "invalidate":
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
            ns = policy.transform.map(event.ns) if policy.transform else event.ns
            if op == "u" and (ns, write.key) in run.inserted:
                self._flush(run, report)
                run = _Run()
            if op == "i":
                run.inserted.add((ns, write.key))
            run.writes[ns].append(write)
        if run:
            self._flush(run, report)
        return report

    def _allowed(self, event: Event) -> bool:
        """Filters name collections; a command is judged by the collection it acts on."""
        ns = event.ns
        if event.op == "c":
            command = event.fields["o"]
            target = command.get(next(iter(command)))
            db = ns.partition(".")[0]
            ns = target if isinstance(target, str) and "." in target else f"{db}.{target}" if isinstance(target, str) else db
        return self._policy.namespaces.allows(ns)

    def _apply_command(self, event: Event, report: ApplyReport) -> None:
        ns, command = event.ns, event.fields["o"]
        if self._policy.transform:
            ns, command = self._policy.transform.map_command(ns, command)
        if self._policy.drop_existing and is_snapshot(event.fields) and command_name(command) == "create":
            self._drop_before_copy(ns, command)
        try:
            applied = apply_command(self._client, ns, command)
        except OperationFailure as exc:
            if is_transient(exc):
                raise
            self._reject(report, event, REJECTED, f"the destination rejected the DDL {dict(command)}: {exc}")
            return
        if applied:
            report.applied["c"] += 1
            log.info("DDL applied", extra={"ns": event.ns, "command": command_name(command)})
        else:
            report.passed_over["command"] += 1

    def _drop_before_copy(self, ns: str, command: Mapping[str, Any]) -> None:
        """--drop-existing: the copy of this collection begins here; every partition waits at this barrier, so
        none of its copied documents is in the destination yet."""
        db = ns.partition(".")[0]
        self._client[db].drop_collection(command["create"])
        log.warning("--drop-existing: dropped the destination collection before its copy",
                    extra={"ns": f"{db}.{command['create']}"})

    def _flush(self, run: _Run, report: ApplyReport) -> None:
        for ns, writes in run.writes.items():
            collection = self._collection(ns)
            self._prepare_updates(collection, writes, report)
            self._execute(collection, [w for w in writes if w.request is not None], report)

    def _prepare_updates(self, collection, writes: list[_Write], report: ApplyReport) -> None:  # type: ignore[no-untyped-def]
        update_ids = {w.key: w.document_id for w in writes if w.event.op == "u"}
        for w in writes:
            if w.event.op == "i":
                if w.event.converge or w.event.replayed:
                    w.request = ReplaceOne({"_id": w.document_id}, w.event.fields["o"], upsert=True)
                else:
                    w.request = InsertOne(w.event.fields["o"])
                    w.replaces_on_duplicate = self._policy.insert_on_dup_update
            elif w.event.op == "d":
                w.request = DeleteOne({"_id": w.document_id})
        if not update_ids:
            return
        state: dict[bytes, Any] = {}
        ids = list(update_ids.values())
        for start in range(0, len(ids), FETCH_CHUNK_IDS):
            for document in collection.find({"_id": {"$in": ids[start:start + FETCH_CHUNK_IDS]}}):
                state[identity(document["_id"])] = document
        for w in writes:
            op = w.event.op
            if op == "d":
                state[w.key] = _ABSENT
            elif op == "u":
                current = state.get(w.key, _ABSENT)
                if current is _ABSENT:
                    if w.event.converge or w.event.replayed:  # deleted before the copy read it; its delete follows
                        report.passed_over["snapshot_overlap"] += 1
                        continue
                    if not self._policy.upsert:
                        self._conflict(report, Conflict(UPDATE_MISSING, w.event, None,
                                                        "no document matches the update's _id"))
                        continue
                    current = dict(w.event.fields["o2"])  # what an upsert of this update would start from
                try:
                    updated = apply_update(current, w.event.fields["o"])
                except UpdateFormatError as exc:
                    self._reject(report, w.event, UNAPPLICABLE_UPDATE, f"cannot apply the update: {exc}")
                    continue
                state[w.key] = updated
                w.request = ReplaceOne({"_id": w.document_id}, updated, upsert=self._policy.upsert)

    def _execute(self, collection, writes: list[_Write], report: ApplyReport) -> None:  # type: ignore[no-untyped-def]
        while writes:
            try:
                collection.bulk_write([w.request for w in writes], ordered=True)
            except BulkWriteError as exc:
                first = exc.details["writeErrors"][0]
                failed, done = writes[first["index"]], writes[: first["index"]]
                self._written(report, done)
                if first.get("code") not in DUPLICATE_KEY_CODES:
                    self._reapply(collection, done)
                    self._reject(report, failed.event, REJECTED, f"the destination rejected the event: "
                                                                 f"{first.get('errmsg')} (code {first.get('code')})")
                    writes = writes[first["index"] + 1:]
                else:
                    writes = self._duplicate(collection, failed, first, writes[first["index"] + 1:], report)
                continue
            self._written(report, writes)
            return

    @staticmethod
    def _written(report: ApplyReport, writes: list[_Write]) -> None:
        for w in writes:
            report.applied[w.event.op] += 1

    def _duplicate(self, collection, write: _Write, error: dict, rest: list[_Write],  # type: ignore[no-untyped-def]
                   report: ApplyReport) -> list[_Write]:
        """Handle a duplicate-key refusal; returns the writes still to do."""
        index_name = duplicate_index_name(error)
        ts = write.event.fields.get("ts")
        same_time = [i for i, later in enumerate(rest) if later.event.fields.get("ts") == ts]
        if write.replaces_on_duplicate and index_name == "_id_":
            self._replace_existing(collection, write, report)
        elif index_name != "_id_" and same_time and not write.tried_again:
            write.tried_again = True
            return rest[: same_time[-1] + 1] + [write] + rest[same_time[-1] + 1:]
        else:
            self._conflict(report, Conflict(DUPLICATE_KEY, write.event, error.get("code"), error.get("errmsg", ""),
                                            index_name))
        return rest

    def _reapply(self, collection, writes: list[_Write]) -> None:  # type: ignore[no-untyped-def]
        """Make sure the writes before a rejected one are applied: mongod applies them, but a server may reject an
        ordered run of inserts as a whole (SecantusDB does on validation errors). Inserts are replayed as
        replacements of the same document, so this is idempotent either way."""
        if not writes:
            return
        requests = [ReplaceOne({"_id": w.document_id}, w.event.fields["o"], upsert=True) if w.event.op == "i"
                    else w.request for w in writes]
        collection.bulk_write(requests, ordered=True)

    def _replace_existing(self, collection, write: _Write, report: ApplyReport) -> None:  # type: ignore[no-untyped-def]
        """insert_on_dup_update: the inserted document replaces the existing one whole (MongoShake merged with
        $set, so fields the insert did not have survived). A duplicate on another unique index stays a conflict."""
        try:
            collection.replace_one({"_id": write.document_id}, write.event.fields["o"])
        except DuplicateKeyError as exc:
            details = exc.details or {}
            self._conflict(report, Conflict(DUPLICATE_KEY, write.event, exc.code, str(details.get("errmsg", exc)),
                                            duplicate_index_name(details)))
            return
        self._written(report, [write])

    def _conflict(self, report: ApplyReport, conflict: Conflict) -> None:
        report.conflicts.append(conflict)


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


def _where(event: Event) -> str:
    return f"{event.topic}/{event.partition}@{event.offset}"
