"""What the consumer does with one poll's messages: take whole messages, pass them through the gates, apply their
events (the sequencer keeping collections with unique indexes in source order), checkpoint in the destination and
commit offsets.

One batch is written at a time, in a writer thread, while the main thread polls, decodes and gates the next and
prepares its write (the sequencer's order, the runs and lanes, the requests that need no read of the destination),
so that between two writes only the hand-over is left. A batch's checkpoint is taken when it is prepared, so it
never holds what later batches passed, and is saved once its write is done, while the next batch is written. A
partition with messages in a later batch, being gated or written, counts as busy for the DDL barrier: its arrival
is recorded only after that batch too is written and checkpointed. Before a write starts, how far it may apply each
partition is saved (a write-ahead mark): a crash before its checkpoint then reads those events again as replayed,
applied convergently, not as new changes."""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bson.timestamp import Timestamp
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from kafkashake.consumer.applier import Applier, Prepared
from kafkashake.consumer.apply_report import ApplyReport
from kafkashake.consumer.barrier import Barriers
from kafkashake.consumer.batch import Batch, Pending
from kafkashake.consumer.checkpoint import ConsumerCheckpointStore, PartitionPosition
from kafkashake.consumer.conflicts import ConflictRecorder, describe
from kafkashake.consumer.dead_letters import UNDECODABLE, DeadLetters
from kafkashake.consumer.decoder import Event
from kafkashake.consumer.gates import CopyOverlap, DelayGate, ExitGate, Verdict
from kafkashake.consumer.intake import Intake, PartitionKey, Received, message_of
from kafkashake.consumer.metrics import ConsumerMetrics
from kafkashake.consumer.parked import before_parked, dropped_namespaces, first_parked, touches
from kafkashake.consumer.partitions import Partitions
from kafkashake.consumer.sequencer import Sequencer
from kafkashake.consumer.settings import ConsumerSettings
from kafkashake.oplog import position
from kafkashake.runtime.errors import FatalError
from kafkashake.runtime.logs import RateLimitedLog

log = logging.getLogger("kafkashake.consumer")
# Checkpoints of the group's other instances are read at most this often.
WATERMARKS_REFRESH_S = 0.02
REPLAY_WINDOW_BATCHES = 10


@dataclass
class Gates:
    """The checks after the barrier, in order; the exit gate and the delay change with /control."""

    exit_point: ExitGate | None
    delay: DelayGate
    overlap: CopyOverlap = field(default_factory=CopyOverlap)


class Replay:
    def __init__(self, settings: ConsumerSettings, consumer: Consumer, store: ConsumerCheckpointStore,
                 partitions: Partitions, sequencer: Sequencer, barriers: Barriers, gates: Gates, applier: Applier,
                 dead_letters: DeadLetters | None, recorder: ConflictRecorder | None, metrics: ConsumerMetrics,
                 call: Callable[[Callable[[], Any], str], Any], partition_count: Callable[[str], int]) -> None:
        self._settings = settings
        self._consumer = consumer
        self._store = store
        self.partitions = partitions
        self.sequencer = sequencer
        self.barriers = barriers
        self.gates = gates
        self._applier = applier
        self._dead_letters = dead_letters
        self._recorder = recorder
        self._metrics = metrics
        self._call = call
        self._partition_count = partition_count
        self.intake = Intake()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="kafkashake-apply")
        self._marker = ThreadPoolExecutor(1, thread_name_prefix="kafkashake-mark")
        self._pending: Pending | None = None
        # The batch passing the gates, not yet handed to the writer: its partitions are busy for the DDL barrier
        # whenever the previous batch settles, also when gating stops on an error and the consumer closes.
        self._gating: Batch | None = None
        self._stashed: list[Received] = []
        # A longer window (a checkpoint kept before parked events) goes in parts: parking carries what they refuse.
        self._window_max = REPLAY_WINDOW_BATCHES * settings.subscription.batch_max_messages
        self._conflict_log = RateLimitedLog(logging.getLogger("kafkashake.consumer.conflicts"))
        self._saved_watermarks: dict[str, tuple[float, dict[int, PartitionPosition]]] = {}
        self.parked: list[Event] = []  # as the last write left them (consumer/parked.py)

    # ---------------------------------------------------------------------------------------------- a batch

    def handle(self, messages: list[Message], window_read: bool = False) -> None:
        """Messages of one poll, errors already taken out. They are decoded and pass the gates while the previous
        poll's events are still being written; once that write is done theirs starts, and the previous batch's
        checkpoint is saved while it runs. Messages of a replay window (what a crash may have left written, read
        again) are kept until the window is read to its end, or a poll brings nothing (`window_read`): written in
        one batch, its final states fit each other (write_plan.collapse_converging_writes)."""
        taken, self._stashed = self._stashed, []
        for message in messages:
            received = self.intake.take(message)
            if received is not None:  # else a fragment: the rest of its value is still to come
                taken.append(received)
        if not window_read and len(taken) < self._window_max and self.partitions.window_unread(taken):
            self._stashed = taken
            return
        self.partitions.windows_read()
        batch = self._gating = Batch()
        consumed = 0
        try:
            for received in taken:
                where = received.where
                if where not in self.partitions:
                    self.intake.forget(where)
                    continue  # fetched before its partition was revoked: its next owner reads it
                self.partitions[where].reading(received.first_offset)
                if where in batch.held:
                    continue  # rewound: read again once the partition is resumed
                consumed += 1
                if received.error is not None:
                    self._undecodable(received, batch)
                else:
                    self._gate(received, batch)
        finally:
            self._metrics.messages_consumed.inc(consumed)
        try:
            next_write = self._prepare(batch)
        except BaseException:
            # The previous batch's checkpoint is saved, but no DDL arrival is recorded: events the sequencer released
            # into the write that now never starts have left it, so their partitions would not count as busy.
            written = self._wait_for_write()
            if written is not None:
                self._save(written.checkpoint)
            raise
        written = self._wait_for_write()
        self._submit(next_write)
        if written is None:
            return
        try:
            self._checkpointed(written)
        except BaseException:
            # The batch now being written is left unsettled: settling it on the way out would save a checkpoint
            # and record DDL arrivals past this batch's unsaved checkpoint.
            self._pending = None
            raise

    def _gate(self, received: Received, batch: Batch) -> None:
        skipped = self.partitions[received.where].mark_replayed(received)
        if skipped:
            self._metrics.events_passed_over.labels("already_applied").inc(skipped)
        verdict = self.barriers.check(received)
        if verdict is Verdict.PASS:
            batch.passed.append(received)
            return
        gates = self.gates
        if verdict is Verdict.APPLY and gates.exit_point is not None:
            verdict = gates.exit_point.check(received)
        if verdict is not Verdict.HOLD:
            gates.overlap.mark(received)
        if verdict is Verdict.APPLY:
            verdict = gates.delay.check(received)
        if verdict is Verdict.APPLY:
            batch.to_apply.append(received)
            return
        if verdict is Verdict.APPLY_PART:
            batch.partly.append(received)
        self.hold_back(received, batch, applied_in_part=verdict is Verdict.APPLY_PART)

    def _undecodable(self, received: Received, batch: Batch) -> None:
        if self._dead_letters is None:
            self.settle()  # everything before it is applied and committed first
            self._start_apply(batch)
            self.settle()
            raise FatalError(
                f"message {received.describe()} cannot be decoded: {received.error}. The consumer stops rather than "
                "skip it; inspect it (kafkashake inspect) and restart, or run with --on-error dlq")
        self.dead_letter(received, UNDECODABLE, received.error or "")
        batch.passed.append(received)

    def hold_back(self, received: Received, batch: Batch, applied_in_part: bool = False) -> None:
        """Leave this message (or, applied in part, its rest) and the rest of its partition unapplied: rewind to it
        and pause the partition."""
        topic, partition = where = received.where
        self.intake.forget(where)
        self._consumer.seek(TopicPartition(topic, partition, received.first_offset))
        self._consumer.pause([TopicPartition(topic, partition)])
        batch.held.add(where)
        state = self.partitions[where]
        state.waiting_at(received.first_offset)
        if applied_in_part and received.events:
            # Its events up to the exit point are applied with this batch; those after it come later.
            assert self.gates.exit_point is not None
            state.applied_in_part(self.gates.exit_point.exit_at, received.events[-1].position)
            self.sequencer.saw(where, self.gates.exit_point.exit_at)
            return
        # Changes of a partition are in source order: those before the held message are done (applied or held).
        first = next(iter(received.events), None)
        ts = None if first is None else first.fields.get("ts")
        if isinstance(ts, Timestamp):
            state.held_at(ts)
            self.sequencer.saw(where, position.predecessor(ts))

    # ---------------------------------------------------------------------------------------------- applying

    def _start_apply(self, batch: Batch) -> None:
        """Prepare the batch's write and hand it to the writer; `settle()` waits for it and saves its checkpoint."""
        self._submit(self._prepare(batch))

    def _submit(self, pending: Pending) -> None:
        assert self._pending is None, "the previous batch is settled before the next one starts"
        self._gating = None
        if pending.prepared is not None:
            pending.written = self._writer.submit(self._write, pending.prepared, pending.marking)
        self._pending = pending

    def _prepare(self, batch: Batch) -> Pending:
        """The batch's events in the order to write them, sorted out for the writer while the previous batch may
        still be written, and the checkpoint it reaches. It stays the batch being gated until it is handed over."""
        transform = self._settings.policy.transform
        destination_ns = transform.map if transform else (lambda ns: ns)
        events = self.sequencer.take(batch.applying(), destination_ns)
        events += self.sequencer.release(self._complete_through, self._partition_count)
        for event in events:
            if event.where in self.partitions:
                self.partitions[event.where].applied_event(event.position)
        self._metrics.held_changes.set(self.sequencer.held())
        marks = self.partitions.write_ahead(events)
        marking = None
        if marks:  # saved while the main thread goes on; the write waits for it (if it fails, so does the write)
            marking = self._marker.submit(self._call, lambda: self._store.mark_writing(marks),
                                          "saving the write-ahead mark")
        checkpoint = self._checkpoint_of(batch)
        return Pending(batch, self._applier.prepare(events) if events or self.parked else None, checkpoint,
                       batch.partitions() | {event.where for event in events}, marking)

    def release_held(self) -> None:
        """With nothing polled: a replay window kept so far is handled; held changes may have become due, another
        instance having applied up to them (with changes moving between instances' partitions, each such step waits
        for this); parked changes are written again."""
        if self._stashed:
            self.handle([], window_read=True)
        if self._pending is None and (self.sequencer.held() or self.parked):
            self._start_apply(Batch())
            self.settle()  # its checkpoint is what the other instances wait for

    def _write(self, prepared: Prepared, marking: Future[None] | None) -> ApplyReport:
        if marking is not None:
            marking.result()
        started = time.perf_counter()
        report = self._call(lambda: self._applier.write(prepared), "applying a batch")
        self._metrics.bulk_write_seconds.observe(time.perf_counter() - started)
        return report

    def settle(self) -> None:
        """Wait for the batch being written, account for it and save its checkpoint (the checkpoint never runs
        ahead of what the destination holds)."""
        written = self._wait_for_write()
        if written is not None:
            self._checkpointed(written)

    def _wait_for_write(self) -> Pending | None:
        """Wait for the batch being written and account for it; its checkpoint is still to save."""
        if self._pending is None:
            return None
        pending, self._pending = self._pending, None
        if pending.written is not None:
            report = pending.written.result()
            self.account(report)
            for rejection in report.rejected:
                event = rejection.event
                self.dead_letter(message_of(pending.batch.applying(), event), rejection.reason,
                                 f"{rejection.error}; event {event.op} on {event.ns}", event)
        return pending

    def _checkpointed(self, written: Pending) -> None:
        """Save the checkpoint of a written batch, then record the DDL arrivals it completes."""
        self._save(written.checkpoint)
        # Only now has every partition written what came before its barrier: a DDL never overtakes those writes.
        # Those with messages in a batch being gated or written are not there yet.
        busy = set() if self._gating is None else self._gating.partitions()
        if self._pending is not None:
            busy |= self._pending.busy
        # A DDL that drops or renames a collection waits for the collection's parked events: their last try
        dropping = self._applier.parked.closing_namespaces = frozenset(
            ns for arrival in self.barriers.waiting.values() for ns in dropped_namespaces(arrival.received.events))
        busy |= {event.where for event in self.parked if touches(event.ns, dropping)}
        self.barriers.record_arrivals(lambda where: where in busy or self.sequencer.held(where) > 0)
        self._applier.parked.closing = self._closing()

    def _closing(self) -> frozenset[PartitionKey]:
        """Partitions whose parked events get their last try, as every change that could free their values is
        written (nothing is held for source order): those whose topic is written past the end of the copy's overlap,
        and those waiting at the exit point with every partition of their topic here waiting too."""
        if self.sequencer.held() or not self.parked:
            return frozenset()
        waiting = self.gates.exit_point.waiting() if self.gates.exit_point else set()
        closing = {where for where in waiting
                   if all(other in waiting for other, _ in self.partitions.items() if other[0] == where[0])}
        parked = {event.where for event in self.parked} - closing
        for topic in {topic for topic, _ in parked}:
            marks = [self._complete_through(topic, k) for k in range(self._partition_count(topic))]
            for where in parked:
                until = self.gates.overlap.until.get(where)
                if where[0] == topic and until is not None and all(mark is not None and mark > until for mark in marks):
                    closing.add(where)
        return frozenset(closing)

    def account(self, report: ApplyReport) -> None:
        """Count what was applied, passed over and refused; record conflicts."""
        if report.parked is not None:
            for where in {event.where for event in self.parked + report.parked}:
                if where in self.partitions:
                    self.partitions[where].changed = True  # its checkpoint moves on (or stays) with its parked events
            self.parked = report.parked
            self._metrics.parked_changes.set(len(self.parked))
        for op, count in report.applied.items():
            self._metrics.events_applied.labels(op).inc(count)
        for reason, count in report.passed_over.items():
            self._metrics.events_passed_over.labels(reason).inc(count)
        for conflict in report.conflicts:
            self._metrics.conflicts.labels(conflict.kind).inc()
            self._conflict_log.warning("conflict: destination left as it is", **describe(conflict))
            if self._recorder is not None:
                self._call(lambda: self._recorder.record(conflict), "recording a conflict")  # type: ignore[union-attr]

    def _complete_through(self, topic: str, partition: int) -> Timestamp | None:
        """Up to where every change of this partition is applied or held here: known first-hand for partitions of
        this instance, from the group's checkpoints for the others."""
        if (topic, partition) in self.partitions:
            return self.sequencer.through((topic, partition))
        read_at, saved = self._saved_watermarks.get(topic, (0.0, {}))
        if time.monotonic() - read_at >= WATERMARKS_REFRESH_S:
            saved = self._call(lambda: self._store.load_topic(topic), "reading the group's checkpoints")
            self._saved_watermarks[topic] = (time.monotonic(), saved)
        other = saved.get(partition)
        return None if other is None else other.watermark

    def dead_letter(self, received: Received, reason: str, error: str, event: Event | None = None) -> None:
        assert self._dead_letters is not None
        self._call(lambda: self._dead_letters.send(received, reason, error, event), "writing a dead letter")  # type: ignore[union-attr]
        self._metrics.dead_letters.labels(reason).inc()

    # ---------------------------------------------------------------------------------------------- checkpoint

    def _checkpoint_of(self, batch: Batch) -> list[PartitionPosition]:
        """Where the partitions stand once this batch is written: its messages passed, every change up to the
        sequencer's first held one applied."""
        by_partition: dict[PartitionKey, list[Received]] = defaultdict(list)
        for received in sorted(batch.to_apply + batch.passed, key=lambda r: r.offset):
            by_partition[received.where].append(received)
        for where, went_through in by_partition.items():
            self.partitions[where].passed_in_order(went_through, self.gates.overlap.until.get(where))
        positions = []
        for where, state in self.partitions.items():
            if not state.changed:
                continue
            state.changed = False
            checkpoint = state.checkpoint(where, self.sequencer.first_held(where))
            if checkpoint is not None:
                positions.append(checkpoint)
        return positions

    def _save(self, saved: list[PartitionPosition]) -> None:
        if not saved:
            return
        firsts = first_parked(self.parked)
        saved = [before_parked(p, firsts.get((p.topic, p.partition))) for p in saved]
        self._call(lambda: self._store.save(saved), "saving the consumer checkpoint")
        self._commit(saved)
        newest = max((p.ts for p in saved if p.ts is not None), default=None)
        if newest is not None:
            self._metrics.checkpoint_ts.set(newest.time)

    def _commit(self, positions: list[PartitionPosition]) -> None:
        offsets = [TopicPartition(p.topic, p.partition, p.offset + 1, metadata=p.topic_id or "") for p in positions]
        try:
            # Asynchronous: librdkafka defers a synchronous commit until it finds a group coordinator, so with Kafka
            # down the consumer would hang there, silent. Failures come back through on_commit.
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            # The destination checkpoint already holds these positions; a failed commit only means the
            # next owner of the partition starts from there instead.
            log.warning("offset commit failed; the destination checkpoint covers it", extra={"error": str(exc)})

    def forget(self, where: PartitionKey) -> None:
        self.intake.forget(where)
        self._applier.parked.drop(where)
        self.parked = [event for event in self.parked if event.where != where]
        self._metrics.parked_changes.set(len(self.parked))
        self.partitions.forget(where)
        self.sequencer.forget(where)
        self.barriers.forget(where)
        self.gates.delay.forget(where)
        self.gates.overlap.until.pop(where, None)
        if self.gates.exit_point is not None:
            self.gates.exit_point.forget(where)
