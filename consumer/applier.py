"""Applying events to the destination as ordered bulk writes, one run at a time.

Within a batch, events are grouped into runs. A run's writes go out per namespace as ordered `bulk_write`s, so
operations on one document keep their order: one for a collection with a unique index besides `_id` (its changes
depend on each other), else one per lane, documents spread over the lanes by `_id`. Namespaces and lanes are written
concurrently, so a distant destination costs one round trip per run, not one per namespace; how many lanes is
measured (consumer/write_lanes.py) unless --write-lanes fixes it. Updates are computed in memory from the
document as it stands (fetched once per run with `$in`, in chunks) and written as replacements: this reproduces
mongod's diff semantics exactly and shows whether the document existed. Where a document's every change in the run
is a diff that `$set`/`$unset` reproduce exactly (document_update.as_update_operators) and its collection has no
unique index besides `_id`, mongod applies the updates itself, unread; one that matched nothing is told by its
document's absence afterwards. An update on a document that an insert earlier in the same run touched closes the run
first, because the insert's outcome is not yet known.

Changes of collections with a unique index besides `_id` come in source order (consumer/sequencer.py). Changes
that share a source time (a transaction's) may still come in another order than the source applied them: a write
such a unique index refuses is tried again after the others of its source time, and only a second refusal is a
conflict."""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pymongo import MongoClient, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError, OperationFailure

from kafkashake.consumer.apply_report import ApplyReport, Rejection, where_in_kafka
from kafkashake.consumer.conflicts import UPDATE_MISSING, Conflict
from kafkashake.consumer.dead_letters import REJECTED, UNKNOWN_OP
from kafkashake.consumer.decoder import Event
from kafkashake.consumer.ddl import apply_command, command_name
from kafkashake.consumer.duplicate_keys import DuplicateKeys
from kafkashake.consumer.parked import ParkedWrites
from kafkashake.consumer.settings import ReplayPolicy
from kafkashake.oplog.namespaces import command_target
from kafkashake.consumer.write_lanes import MEASURED_WRITES, FixedLanes, LaneTuner
from kafkashake.consumer.write_plan import Lane, Write, id_chunks, ids_to_read, plan, plan_ahead
from kafkashake.oplog.entry import CHANGE_STREAM_DDL, is_internal_namespace
from kafkashake.runtime import mongo
from kafkashake.runtime.errors import FatalError
from kafkashake.runtime.retry import is_transient
from kafkashake.schemas.codec import EVENT_CODEC_OPTIONS
from kafkashake.schemas.partitioning import key_text
from kafkashake.schemas.snapshot import is_snapshot

log = logging.getLogger("kafkashake.consumer.applier")

DUPLICATE_KEY_CODES = frozenset({11000, 11001})
PASSED_OVER_REASONS = {"n": "noop", "c": "command", "invalidate": "invalidate", "kafkashake.gap": "history_gap",
                       **{kind: "command" for kind in CHANGE_STREAM_DDL}}
# Bulk writes at once in all, the lanes of every namespace of a run together (a thread is started when first needed).
WRITES_AT_ONCE = 16


@dataclass
class Outcome:
    """What one namespace's ordered bulk writes did: the writes that went through, and how many documents their
    updates and replacements matched or upserted (each such write does one or the other unless it missed)."""

    written: list[Write] = field(default_factory=list)
    matched: int = 0

    def add(self, writes: list[Write], matched: int) -> None:
        self.written += writes
        self.matched += matched

    @property
    def updates_written(self) -> int:
        return sum(isinstance(w.request, (UpdateOne, ReplaceOne)) for w in self.written)


class _Run:
    def __init__(self) -> None:
        self.writes: dict[str, list[Write]] = defaultdict(list)
        self.inserted: set[tuple[str, str]] = set()
        self.lanes: list[Lane] | None = None
        self.lane_count = 1
        self.measured_writes = 0  # the writes timed for the batch's lane count; 0 when the run is not timed

    def __bool__(self) -> bool:
        return bool(self.writes)


@dataclass
class Prepared:
    """A batch's events sorted out before their turn to be written: runs of writes and the DDL commands between
    them. The runs before the first command have their lanes, and what needs no read of the destination, planned."""

    events: list[Event]
    steps: list[_Run | Event] = field(default_factory=list)
    report: ApplyReport = field(default_factory=ApplyReport)
    written_before: bool = False
    # Every timed run of a batch is split into the same count, and the batch is timed as a whole: runs within a
    # batch differ (inserts before the updates of the same documents; the first written while the next batch is
    # prepared), batches much less.
    lane_count: int | None = None


class Applier:
    def __init__(
        self,
        client: MongoClient,
        private_databases: frozenset[str],
        policy: ReplayPolicy = ReplayPolicy(),
        dead_letters: bool = True,
        has_unique_index: Callable[[str], bool] = lambda ns: True,
        lanes: FixedLanes | LaneTuner | None = None,
    ) -> None:
        self._client = client
        self._private = private_databases
        self._policy = policy
        self._dead_letters = dead_letters
        self._has_unique_index = has_unique_index
        self.lanes = lanes or LaneTuner()
        self._writers = ThreadPoolExecutor(max(WRITES_AT_ONCE, self.lanes.most()), thread_name_prefix="kafkashake-write")
        self.parked = ParkedWrites()
        self._duplicate_keys = DuplicateKeys(client, self.parked)

    def _reject(self, report: ApplyReport, event: Event, reason: str, error: str) -> None:
        """An event that can never be applied: reported for the dead-letter topic, or replay stops."""
        if not self._dead_letters:
            raise FatalError(
                f"{error} (event at {where_in_kafka(event)} on {event.ns}). Replay stops here so nothing is skipped; fix the "
                "destination (validator, index, permissions) and restart, or run with --on-error dlq"
            )
        report.rejected.append(Rejection(event, reason, error))

    def _collection(self, ns: str):  # type: ignore[no-untyped-def]
        db, _, coll = ns.partition(".")
        return mongo.latest(self._client, db, codec_options=EVENT_CODEC_OPTIONS)[coll]

    def apply(self, events: list[Event], carry_parked: bool = True) -> ApplyReport:
        """`carry_parked=False` for a DDL applied while a batch may be written: the parked events go with the batches
        of changes (a DDL that drops or renames their collection waits for them: consumer/replay.py)."""
        prepared = self.prepare(events)
        return self.write(prepared) if carry_parked else self._write(prepared, [])

    def write(self, prepared: Prepared) -> ApplyReport:
        """Write a prepared batch, the parked events (consumer/parked.py) first. Tried again (after a transient
        error) it is prepared afresh, as a write's plan and its retries of refused writes depend on the destination
        of the attempt; so is a batch that carries parked events."""
        parked = self.parked.take()
        try:
            report = self._write(prepared, [event for events in parked.values() for event in events])
        except BaseException:
            self.parked.put_back(parked)
            raise
        report.parked = self.parked.events()
        return report

    def _write(self, prepared: Prepared, parked: list[Event]) -> ApplyReport:
        if prepared.written_before:
            for event in prepared.events:
                event.replayed = True  # the attempt that failed may have applied any of them
        fresh = self.prepare(parked + prepared.events) if prepared.written_before or parked else prepared
        prepared.written_before = True
        report = ApplyReport()
        report.merge(fresh.report)
        timed_writes, timed_seconds = 0, 0.0
        for step in fresh.steps:
            if isinstance(step, Event):
                self._apply_command(step, report)
            else:
                seconds = self._flush(step, fresh, report)
                if step.measured_writes:
                    timed_writes += step.measured_writes
                    timed_seconds += seconds
        if fresh.lane_count is not None:
            self.lanes.record(fresh.lane_count, timed_writes, timed_seconds)
        return report

    def prepare(self, events: list[Event]) -> Prepared:
        prepared = Prepared(events)
        report, steps = prepared.report, prepared.steps
        run = _Run()
        policy = self._policy
        for event in events:
            op = event.op
            if policy.namespaces and not self._allowed(event):
                report.passed_over["filtered"] += 1
                continue
            if op == "c" and (policy.ddl or is_snapshot(event.fields)) and not is_internal_namespace(event.ns, self._private):
                if run:
                    steps.append(run)
                    run = _Run()
                steps.append(event)
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
                              "from the destination", extra={"kafka": where_in_kafka(event)})
                continue
            if is_internal_namespace(event.ns, self._private):
                report.passed_over["internal_namespace"] += 1
                continue
            write = Write.of(event)
            ns = policy.transform.map(event.ns) if policy.transform else event.ns
            if op == "u" and (ns, write.key) in run.inserted:
                steps.append(run)
                run = _Run()
            if op == "i" and not (event.converge or event.replayed):  # else it replaces: its outcome is known
                run.inserted.add((ns, write.key))
            run.writes[ns].append(write)
        if run:
            steps.append(run)
        for step in steps:
            if isinstance(step, Event):
                break  # a DDL can change the indexes the lanes of later runs depend on: those are planned after it
            step.lanes = self._lanes_of(step, prepared)
        return prepared

    def _allowed(self, event: Event) -> bool:
        """Filters name collections; a command is judged by the collection it acts on."""
        ns = command_target(event.ns, event.fields["o"]) if event.op == "c" else event.ns
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

    def _lanes_of(self, run: _Run, prepared: Prepared) -> list[Lane]:
        # Read once per run: the lanes of a namespace and their writes must agree on it.
        in_order = {ns: self._has_unique_index(ns) for ns in run.writes}
        timed = not any(in_order.values()) and max(map(len, run.writes.values())) >= MEASURED_WRITES
        if timed and prepared.lane_count is None:
            prepared.lane_count = self.lanes.draw()
        run.lane_count = prepared.lane_count if timed else self.lanes.chosen
        run.measured_writes = sum(map(len, run.writes.values())) if timed else 0
        lanes = [Lane(ns, writes, in_order[ns]) for ns, run_writes in run.writes.items()
                 for writes in self._split(run_writes, in_order[ns], run.lane_count)]
        for lane in lanes:
            plan_ahead(lane, self._collection(lane.ns).write_concern.acknowledged, self._policy)
        return lanes

    def _flush(self, run: _Run, prepared: Prepared, report: ApplyReport) -> float:
        """Write one run; the seconds it took."""
        lanes = run.lanes if run.lanes is not None else self._lanes_of(run, prepared)
        started = time.perf_counter()
        if len(lanes) == 1:
            self._write_lane(lanes[0], report)
        else:
            lane_reports = [ApplyReport() for _ in lanes]
            futures = [self._writers.submit(self._write_lane, lane, lane_report)
                       for lane, lane_report in zip(lanes, lane_reports)]
            for future in futures:
                future.exception()  # every lane finishes before any error is raised
            for future in futures:
                future.result()
            for lane_report in lane_reports:
                report.merge(lane_report)
        return time.perf_counter() - started

    @staticmethod
    def _split(writes: list[Write], in_source_order: bool, count: int) -> list[list[Write]]:
        """The lanes of one namespace's writes; a document's writes stay in one lane, in order. A collection with a
        unique index besides `_id` keeps one lane: its documents' changes depend on each other."""
        if count == 1 or len(writes) < 2 * count or in_source_order:
            return [writes]
        lanes: list[list[Write]] = [[] for _ in range(count)]
        for write in writes:
            lanes[hash(write.key) % count].append(write)
        return [lane for lane in lanes if lane]

    def _write_lane(self, lane: Lane, report: ApplyReport) -> None:
        collection = self._collection(lane.ns)
        planned = lane.planned
        if planned is None:
            planned = plan(lane.writes, self._read(collection, ids_to_read(lane.writes)), self._policy,
                           lane.in_source_order)
        direct = lane.direct
        report.conflicts += planned.conflicts
        report.passed_over.update(planned.passed_over)
        for event, reason, error in planned.unapplicable:
            self._reject(report, event, reason, error)
        outcome = self._execute(collection, planned.writes, report)
        if direct and outcome.matched < outcome.updates_written:
            direct_ids = {id(w) for w in direct}
            self._report_missing(collection, [w for w in outcome.written if id(w) in direct_ids], report)

    def _report_missing(self, collection, direct: list[Write],  # type: ignore[no-untyped-def]
                        report: ApplyReport) -> None:
        """Some update matched nothing. Direct updates' documents have no other change in the run, so those that
        are absent now are the ones: conflicts, as for an update planned on a missing document."""
        present = self._read(collection, list({w.key: w.document_id for w in direct}.values()), {"_id": 1})
        for w in direct:
            if w.key not in present:
                report.applied["u"] -= 1
                report.conflicts.append(Conflict(UPDATE_MISSING, w.event, None, "no document matches the update's _id"))

    @staticmethod
    def _read(collection, ids: list[Any],  # type: ignore[no-untyped-def]
              projection: dict[str, int] | None = None) -> dict[str, Any]:
        """The documents with these `_id`s (their fields in `projection`), by key text."""
        documents = {}
        for chunk in id_chunks(ids):
            for document in collection.find({"_id": {"$in": chunk}}, projection):
                documents[key_text(document["_id"])] = document
        return documents

    def _execute(self, collection, writes: list[Write],  # type: ignore[no-untyped-def]
                 report: ApplyReport) -> Outcome:
        """Write in order, going on after a refused write as the policy says."""
        outcome = Outcome()
        while writes:
            try:
                result = collection.bulk_write([w.request for w in writes], ordered=True)
            except BulkWriteError as exc:
                if is_transient(exc):
                    raise  # the whole batch is applied again once the destination is back
                if exc.details.get("writeConcernErrors"):
                    raise FatalError(
                        f"the destination did not confirm the write concern of writes to {collection.full_name}: "
                        f"{exc.details['writeConcernErrors']}. Check the health of the destination's replica set "
                        "(a secondary behind or down), or the w and wtimeoutMS of the destination URI (--dest-uri or "
                        "--dest-uri-file); on restart the batch is applied again from the checkpoint") from exc
                first = exc.details["writeErrors"][0]
                failed, done = writes[first["index"]], writes[: first["index"]]
                outcome.add(done, exc.details.get("nMatched", 0) + exc.details.get("nUpserted", 0))
                report.written(done)
                if first.get("code") not in DUPLICATE_KEY_CODES:
                    self._reject(report, failed.event, REJECTED, f"the destination rejected the event: "
                                                                 f"{first.get('errmsg')} (code {first.get('code')})")
                    writes = writes[first["index"] + 1:]
                else:
                    writes = self._duplicate_keys.handle(collection, failed, first, writes[first["index"] + 1:], report)
                continue
            outcome.add(writes, result.matched_count + result.upserted_count if result.acknowledged else 0)
            report.written(writes)
            return outcome
        return outcome

