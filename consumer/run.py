"""The consumer's main loop: poll, take whole messages, pass them through the gates, apply, checkpoint in the
destination, commit offsets."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import bson
from bson.timestamp import Timestamp
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from kafkashake.consumer import assignment
from kafkashake.oplog import position
from kafkashake.consumer.applier import Applier, ApplyReport
from kafkashake.consumer.barrier import BarrierStore
from kafkashake.consumer.checkpoint import ConsumerCheckpointStore, PartitionPosition
from kafkashake.consumer.conflicts import ConflictRecorder, describe
from kafkashake.consumer.dead_letters import UNDECODABLE, DeadLetters
from kafkashake.consumer.decoder import Event
from kafkashake.consumer.gates import Arrival, BarrierGate, CopyOverlap, DelayGate, ExitGate, Subscription, Verdict
from kafkashake.consumer.intake import Intake, PartitionKey, Received
from kafkashake.consumer.metrics import ConsumerMetrics
from kafkashake.consumer.partitions import Partitions
from kafkashake.consumer.settings import ConsumerSettings
from kafkashake.consumer.sequencer import Sequencer, UniqueIndexes
from kafkashake.runtime import kafka_config, mongo
from kafkashake.runtime.errors import FatalError
from kafkashake.runtime.http_api import ProcessEndpoint
from kafkashake.runtime.kafka_health import KafkaHealth, KafkaUse
from kafkashake.runtime.kafka_topics import admin_config
from kafkashake.runtime.logs import RateLimitedLog
from kafkashake.runtime.retry import retry_transient
from kafkashake.runtime.shutdown import ShutdownFlag
from kafkashake.runtime.status import Liveness, RateMeter, RuntimeControls, counter_totals, describe_position, sanitized
from kafkashake.schemas import headers
from kafkashake.schemas.codec import EVENT_CODEC_OPTIONS

log = logging.getLogger("kafkashake.consumer")

CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "enable.partition.eof": True,
    # Notice topics created after start (per-namespace topics, --topic-pattern) within seconds, not 5 minutes.
    "topic.metadata.refresh.interval.ms": 5000,
    "statistics.interval.ms": 5000,
    # A broker holds a fetch up to this long waiting for data; librdkafka's 500 ms default shows up as latency.
    "fetch.wait.max.ms": 100,
}
# How often the ids of the topics read are checked (a topic deleted and re-created keeps its name, not its id).
TOPIC_ID_CHECK_S = 5.0
# Checkpoints of the group's other instances are read at most this often.
WATERMARKS_REFRESH_S = 0.25


@dataclass
class Batch:
    """What one poll brought: messages to apply, positions to checkpoint, barriers reached, partitions held."""

    to_apply: list[Received] = field(default_factory=list)
    # Messages whose events are applied in part (up to the exit point): their partitions stay before them.
    partly: list[Received] = field(default_factory=list)
    passed: list[Received] = field(default_factory=list)
    arrivals: list[Arrival] = field(default_factory=list)
    held: set[PartitionKey] = field(default_factory=set)
    held_from: dict[PartitionKey, int] = field(default_factory=dict)

    def applying(self) -> list[Received]:
        return self.to_apply + self.partly


class ConsumerRun:
    def __init__(self, settings: ConsumerSettings, shutdown: ShutdownFlag) -> None:
        self.settings = settings
        self.shutdown = shutdown
        self.metrics = ConsumerMetrics()
        self.destination = mongo.connect(settings.dest_uri, "kafkashake-consumer")
        checkpoint_db = self.destination[settings.checkpoint_db]
        self.store = ConsumerCheckpointStore(checkpoint_db[settings.checkpoint_collection], settings.group_id)
        self._conflict_log = RateLimitedLog(logging.getLogger("kafkashake.consumer.conflicts"))
        self._kafka_warnings = RateLimitedLog(log, per_window=1, window_s=30.0)
        self.kafka_health = KafkaHealth("consumer", KafkaUse(settings.brokers, settings.topic or settings.topic_pattern,
                                                             group=settings.group_id), settings.startup_timeout_s)
        kafka = kafka_config.client_config(settings.brokers, {}, settings.kafka_properties)
        self.dead_letters = (DeadLetters(kafka, settings.dead_letter_topic_name, settings.group_id, self.kafka_health)
                             if settings.on_error == "dlq" else None)
        self.partitions = Partitions()
        self.unique_indexes = UniqueIndexes(self.destination)
        self.sequencer = Sequencer(lambda ns: self._call(lambda: self.unique_indexes(ns), "reading the indexes"))
        self._saved_watermarks: dict[str, tuple[float, dict[int, PartitionPosition]]] = {}
        self._arrivals: list[Arrival] = []
        self.applier = Applier(self.destination, frozenset({settings.checkpoint_db, settings.conflict_db}),
                               settings.policy, self.dead_letters is not None)
        self.recorder = (ConflictRecorder(self.destination, settings.conflict_db)
                         if settings.conflict_write_to == "db" else None)
        self.intake = Intake()
        self.barriers = BarrierStore(checkpoint_db["ddl_barrier"], settings.group_id)
        self.subscription = Subscription(settings.topic, settings.topic_pattern)
        self.barrier_gate = BarrierGate(settings.policy.ddl, self.subscription,
                                        lambda barrier: self._call(lambda: self.barriers.is_applied(barrier),
                                                                   "reading a DDL barrier"))
        self.delay = DelayGate(settings.target_delay_s)
        self.exit_gate = ExitGate(settings.exit_at) if settings.exit_at is not None else None
        self.overlap = CopyOverlap()
        self.controls = RuntimeControls(frozenset({"pause", "resume", "target_delay", "exit_at"}),
                                        settings.target_delay_s, settings.exit_at)
        self._all_paused = False
        self._rates = RateMeter()
        self.liveness = Liveness("replaying")
        self._partition_counts: dict[str, int] = {}
        self._exit_logged_at = 0.0
        self._lag_known: tuple[float, float] | None = None
        self._topic_ids_read_at = time.monotonic()
        self.endpoint = ProcessEndpoint(self.metrics.registry, self.status, self.ready, self.controls.apply,
                                        settings.control_token)
        self.metrics.delay.set(settings.target_delay_s)
        config = kafka_config.client_config(
            settings.brokers, {**CONSUMER_DEFAULTS, "group.id": settings.group_id, "stats_cb": self._on_statistics,
                               **self.kafka_health.client_options()},
            settings.kafka_properties,
        )
        self._incremental = assignment.is_incremental(config)
        self.consumer = Consumer(config)
        self.admin = AdminClient(admin_config(config))

    def _call(self, action: Callable[[], Any], what: str) -> Any:
        return retry_transient(action, what, lambda: self.shutdown.requested)

    # ------------------------------------------------------------------------------------------ assignment

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        points = assignment.resume_points(consumer, self.admin, self.store, partitions, self._call)
        for tp in partitions:
            where = (tp.topic, tp.partition)
            point = points[where]
            state = self.partitions.assign(where)
            state.topic_id = point.topic_id
            state.restore(point.saved)
            self.sequencer.saw(where, None if point.saved is None else point.saved.watermark)
            if point.saved is not None and point.saved.snapshot_until is not None:
                self.overlap.until[where] = point.saved.snapshot_until
            tp.offset = point.offset
        if self._incremental:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:  # held messages are read again by the partition's next owner
            self._forget((tp.topic, tp.partition))
        self.metrics.partitions_paused.set(len(self.delay.paused))

    def _forget(self, where: PartitionKey) -> None:
        self.delay.forget(where)
        self.barrier_gate.forget(where)
        self.intake.forget(where)
        self.partitions.forget(where)
        self.sequencer.forget(where)
        self.overlap.until.pop(where, None)
        if self.exit_gate is not None:
            self.exit_gate.forget(where)

    def _notice_recreated_topics(self) -> None:
        """A topic deleted and re-created under the same name while this consumer had it: librdkafka carries on at
        the old offsets, which would skip the new topic's first messages. Read its ids every few seconds; a new id
        sends the topic's partitions back to its start, as a new group would, with a warning."""
        now = time.monotonic()
        if now - self._topic_ids_read_at < TOPIC_ID_CHECK_S:
            return
        self._topic_ids_read_at = now
        owned = self.partitions.items()
        ids = assignment.topic_ids(self.admin, {topic for (topic, _), _ in owned})
        for topic in {topic for (topic, _), state in owned if state.topic_id and ids.get(topic, state.topic_id)
                      != state.topic_id}:
            self._restart_topic(topic, ids[topic])

    def _restart_topic(self, topic: str, topic_id: str) -> None:
        partitions = [where for where, _ in self.partitions.items() if where[0] == topic]
        log.warning("the topic was deleted and re-created under the same name: reading the new one from its start, "
                    "as a new group would; changes already applied from it apply again, convergently",
                    extra={"topic": topic, "topic_id": topic_id})
        self._partition_counts.pop(topic, None)
        for where in partitions:
            tp = TopicPartition(*where)
            read_to = self.consumer.position([tp])[0].offset
            self._forget(where)
            state = self.partitions.assign(where)
            state.topic_id = topic_id
            if read_to > 0:
                state.replay_through = (read_to - 1, 2**31)
            self.consumer.seek(TopicPartition(where[0], where[1], OFFSET_BEGINNING))
        self._resume(partitions)

    def _partition_count(self, topic: str) -> int:
        count = self._partition_counts.get(topic)
        if count is None:
            metadata = self.consumer.list_topics(topic, timeout=30).topics.get(topic)
            count = len(metadata.partitions) if metadata is not None and metadata.error is None else 0
            self._partition_counts[topic] = count
        return count

    # ------------------------------------------------------------------------------------------ the loop

    def run(self) -> None:
        settings = self.settings
        self.endpoint.serve(settings.metrics_host, settings.metrics_port)
        mongo.ensure_reachable(self.destination, "destination", settings.dest_uri, lambda: self.shutdown.requested,
                               settings.startup_timeout_s)
        self._ensure_kafka_reachable()
        if settings.policy.drop_existing:
            log.warning("--drop-existing is on (it is off by default): each destination collection is dropped when "
                        "the producer's copy of it begins, and documents that exist only in the destination are lost")
        self.consumer.subscribe(settings.subscription, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        log.info("consumer started", extra={"subscription": settings.subscription, "group": settings.group_id})
        try:
            while not self.shutdown.requested:
                self._turn()
                if self.exit_gate is not None and self._exit_point_reached():
                    break
        finally:
            self.consumer.close()
            log.info("consumer stopped")

    def _ensure_kafka_reachable(self) -> None:
        try:
            self.consumer.list_topics(timeout=self.settings.startup_timeout_s)
        except KafkaException as exc:
            self.consumer.poll(0)  # serve the error callbacks: an authentication failure says more than a timeout
            raise FatalError(self.kafka_health.failure(exc.args[0], (
                f"cannot reach Kafka at {self.settings.brokers} within {self.settings.startup_timeout_s:.0f} s: "
                f"{exc}. Check --brokers, the listeners the brokers advertise, and the security settings "
                "(--kafka-*)"))) from exc
        self.kafka_health.reached()

    def _turn(self) -> None:
        self.liveness.beat()
        if self.kafka_health.fatal is not None:
            raise FatalError(self.kafka_health.fatal)
        self._follow_controls()
        self._resume_due_partitions()
        self._pass_applied_barriers()
        self._notice_recreated_topics()
        messages = self.consumer.consume(self.settings.batch_max_messages,
                                         self.delay.seconds_until_next(self.settings.poll_timeout_s))
        if messages:
            self._handle(messages)
        self.metrics.lag.set(self._lag_seconds())

    def _lag_seconds(self) -> float:
        """The partitions' lag; while Kafka is out of reach (the group may have taken them away), the last lag
        known grows by the time since."""
        now = time.time()
        lag = self.partitions.lag_seconds(now)
        if lag is not None:
            self._lag_known = (lag, now)
            return lag
        if self.kafka_health.unreachable_since is not None and self._lag_known is not None:
            known, at = self._lag_known
            return round(known + now - at, 3)
        return 0.0

    def _handle(self, messages: list[Message]) -> None:
        batch = Batch()
        for message in messages:
            error = message.error()
            if error is not None:
                self._kafka_error(message, error)
                continue
            self.kafka_health.reached()
            where = (message.topic(), message.partition())
            if where not in self.partitions:
                continue  # fetched before its partition was revoked in this very poll: its next owner reads it
            self.partitions[where].at_end = False
            if where in batch.held:
                continue  # rewound: read again once the partition is resumed
            received = self.intake.take(message)
            if received is None:
                continue  # a fragment: the rest of its value is still to come
            self.metrics.messages_consumed.inc()
            if received.error is not None:
                self._undecodable(received, batch)
            else:
                self._gate(received, batch)
        self._apply(batch)
        self._checkpoint(batch)
        self._arrivals += batch.arrivals
        self._record_arrivals()
        self._pace_held()
        self.metrics.held_changes.set(self.sequencer.held())

    def _record_arrivals(self) -> None:
        """Barriers reached by partitions that have applied everything before them (held changes included)."""
        waiting = []
        for arrival in self._arrivals:
            if self.sequencer.held(arrival.where):
                waiting.append(arrival)
                continue
            self._call(lambda: self.barriers.arrive(arrival.barrier, arrival.where[0], arrival.where[1],
                                                    arrival.expected), "recording a DDL arrival")
            self._apply_barrier_if_complete(arrival)
        self._arrivals = waiting

    def _pace_held(self) -> None:
        """A partition holding many changes is far ahead of the others: it waits, its changes kept."""
        for topic, partition in self.sequencer.to_pause():
            self.consumer.pause([TopicPartition(topic, partition)])
        resumable = self.sequencer.to_resume()
        if resumable:
            self._resume(resumable)

    def _gate(self, received: Received, batch: Batch) -> None:
        self.partitions[received.where].mark_replayed(received)
        verdict, arrival = self.barrier_gate.check(received)
        if verdict is Verdict.PASS:
            batch.passed.append(received)
            return
        if verdict is Verdict.HOLD:
            assert arrival is not None
            batch.arrivals.append(arrival)
            self._hold_back(received, batch)
            return
        if self.exit_gate is not None:
            verdict = self.exit_gate.check(received)
        if verdict is not Verdict.HOLD:
            self.overlap.mark(received)
        if verdict is Verdict.APPLY:
            verdict = self.delay.check(received)
            self.metrics.partitions_paused.set(len(self.delay.paused))
        if verdict is Verdict.APPLY:
            batch.to_apply.append(received)
            return
        if verdict is Verdict.APPLY_PART:
            batch.partly.append(received)
        self._hold_back(received, batch)

    def _undecodable(self, received: Received, batch: Batch) -> None:
        if self.dead_letters is None:
            self._apply(batch)  # everything before it is applied and committed first
            self._checkpoint(batch)
            raise FatalError(
                f"message {received.describe()} cannot be decoded: {received.error}. The consumer stops rather than "
                "skip it; inspect it (kafkashake inspect) and restart, or run with --on-error dlq")
        self._dead_letter(received, UNDECODABLE, received.error or "")
        batch.passed.append(received)

    def _hold_back(self, received: Received, batch: Batch) -> None:
        """Leave this message and the rest of its partition unapplied: rewind to it and pause the partition."""
        topic, partition = where = received.where
        self.intake.forget(where)
        self.consumer.seek(TopicPartition(topic, partition, received.first_offset))
        self.consumer.pause([TopicPartition(topic, partition)])
        batch.held.add(where)
        batch.held_from[where] = received.first_offset
        # Changes of a partition are in source order: those before the held message are done (applied or held).
        first = next(iter(received.events), None)
        ts = None if first is None else first.fields.get("ts")
        if isinstance(ts, Timestamp):
            self.partitions[where].held_at(ts)
            self.sequencer.saw(where, position.predecessor(ts))

    # ------------------------------------------------------------------------------------------ applying

    def _apply(self, batch: Batch) -> ApplyReport:
        transform = self.settings.policy.transform
        destination_ns = transform.map if transform else (lambda ns: ns)
        events = [event for received in batch.applying() for event in self.sequencer.take(received, destination_ns)]
        events += self.sequencer.release(self._complete_through, self._partition_count)
        if not events:
            return ApplyReport()
        for event in events:
            if event.where in self.partitions:
                self.partitions[event.where].applied_event(event.position)
        started = time.perf_counter()
        report = self._call(lambda: self.applier.apply(events), "applying a batch")
        self.metrics.bulk_write_seconds.observe(time.perf_counter() - started)
        for op, count in report.applied.items():
            self.metrics.events_applied.labels(op).inc(count)
        for reason, count in report.passed_over.items():
            self.metrics.events_passed_over.labels(reason).inc(count)
        for conflict in report.conflicts:
            self.metrics.conflicts.labels(conflict.kind).inc()
            self._conflict_log.warning("conflict: destination left as it is", **describe(conflict))
            if self.recorder is not None:
                self._call(lambda: self.recorder.record(conflict), "recording a conflict")  # type: ignore[union-attr]
        for rejection in report.rejected:
            event = rejection.event
            self._dead_letter(self._received_of(batch, event), rejection.reason,
                              f"{rejection.error}; event {event.op} on {event.ns}", event)
        return report

    def _received_of(self, batch: Batch, event: Event) -> Received:
        """The message an event came in (for a dead letter): in this batch, or held since an earlier one."""
        for received in batch.applying():
            if received.where == event.where and received.offset == event.offset:
                return received
        return Received(event.topic, event.partition, event.offset, event.offset, None,
                        bson.encode(event.fields, codec_options=EVENT_CODEC_OPTIONS), [], {}, [event])

    def _complete_through(self, topic: str, partition: int) -> Timestamp | None:
        """Up to where every change of this partition is applied or held here: known first-hand for partitions of
        this instance, from the group's checkpoints for the others."""
        if (topic, partition) in self.partitions:
            return self.sequencer.through((topic, partition))
        read_at, saved = self._saved_watermarks.get(topic, (0.0, {}))
        if time.monotonic() - read_at >= WATERMARKS_REFRESH_S:
            saved = self._call(lambda: self.store.load_topic(topic), "reading the group's checkpoints")
            self._saved_watermarks[topic] = (time.monotonic(), saved)
        other = saved.get(partition)
        return None if other is None else other.watermark

    def _checkpoint(self, batch: Batch) -> None:
        for received in sorted(batch.to_apply + batch.passed, key=lambda r: r.offset):
            self.partitions[received.where].passed(received, self.overlap.until.get(received.where))
        saved = []
        for where, state in self.partitions.items():
            if not state.changed:
                continue
            checkpoint = state.checkpoint(where, self.sequencer.first_held(where), batch.held_from.get(where))
            if checkpoint is not None:
                saved.append(checkpoint)
        if not saved:
            return
        self._call(lambda: self.store.save(saved), "saving the consumer checkpoint")
        self._commit(saved)
        for where, state in self.partitions.items():
            state.changed = False
        newest = max((p.ts for p in saved if p.ts is not None), default=None)
        if newest is not None:
            self.metrics.checkpoint_ts.set(newest.time)

    def _commit(self, positions: list[PartitionPosition]) -> None:
        offsets = [TopicPartition(p.topic, p.partition, p.offset + 1, metadata=p.topic_id or "") for p in positions]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # The destination checkpoint already holds these positions; a failed commit only means the
            # next owner of the partition starts from there instead.
            log.warning("offset commit failed; the destination checkpoint covers it", extra={"error": str(exc)})

    def _dead_letter(self, received: Received, reason: str, error: str, event: Event | None = None) -> None:
        assert self.dead_letters is not None
        self._call(lambda: self.dead_letters.send(received, reason, error, event), "writing a dead letter")  # type: ignore[union-attr]
        self.metrics.dead_letters.labels(reason).inc()

    # ------------------------------------------------------------------------------------------ waiting partitions

    def _apply_barrier_if_complete(self, arrival: Arrival) -> None:
        barrier = arrival.barrier
        if not self._call(lambda: self.barriers.claim(barrier), "claiming a DDL barrier"):
            return
        report = self._call(lambda: self.applier.apply(arrival.received.events), "applying DDL")
        for op, count in report.applied.items():
            self.metrics.events_applied.labels(op).inc(count)
        for rejection in report.rejected:
            self._dead_letter(arrival.received, rejection.reason, rejection.error, rejection.event)
        self._call(lambda: self.barriers.mark_applied(barrier), "releasing a DDL barrier")
        log.info("DDL barrier passed: applied after every partition reached it", extra={"barrier": barrier})

    def _pass_applied_barriers(self) -> None:
        """Resume partitions whose barrier is applied; they read the barrier message again and move past it."""
        for where, arrival in list(self.barrier_gate.waiting.items()):
            self._apply_barrier_if_complete(arrival)
            if self._call(lambda: self.barriers.is_applied(arrival.barrier), "reading a DDL barrier"):
                self.barrier_gate.forget(where)
                self._resume([where])

    def _resume_due_partitions(self) -> None:
        due = self.delay.release_due()
        if due:
            self._resume(due)
            self.metrics.partitions_paused.set(len(self.delay.paused))

    def _resume(self, partitions: list[PartitionKey]) -> None:
        held = self._held()
        if self.controls.paused:
            return
        self.consumer.resume([TopicPartition(topic, partition) for topic, partition in partitions
                              if (topic, partition) not in held])

    def _held(self) -> set[PartitionKey]:
        return set(self.delay.paused) | set(self.barrier_gate.waiting) | self.sequencer.paused()

    # ------------------------------------------------------------------------------------------ Kafka events

    def _kafka_error(self, message: Message, error: KafkaError) -> None:
        where = (message.topic(), message.partition())
        code = error.code()
        if code == KafkaError._PARTITION_EOF:
            self.kafka_health.reached()
            if where in self.partitions:
                self.partitions[where].at_end = True
            return
        fatal = self.kafka_health.use.explain(error)
        if fatal is not None:
            raise FatalError(fatal)
        if code == KafkaError.UNKNOWN_TOPIC_OR_PART:
            self._kafka_warnings.warning("topic does not exist (deleted, or not yet created): waiting for it",
                                         topic=message.topic(), error=error.str())
            return
        self._kafka_warnings.warning("Kafka consumer error, retrying", error=error.str())

    def _on_statistics(self, document: str) -> None:
        """librdkafka's statistics (every statistics.interval.ms) already hold each partition's lag in messages."""
        import json

        try:
            topics = json.loads(document).get("topics", {})
        except ValueError:
            return
        for topic in topics.values():
            for partition, values in topic.get("partitions", {}).items():
                lag = values.get("consumer_lag", -1)
                if partition != "-1" and lag >= 0:
                    self.metrics.kafka_lag.labels(partition).set(lag)

    # ------------------------------------------------------------------------------------------ control

    def _follow_controls(self) -> None:
        """Apply /control changes on the main thread, where the Kafka consumer lives."""
        controls = self.controls
        if controls.target_delay is not None and controls.target_delay != self.delay.delay_s:
            self.delay.delay_s = controls.target_delay
            self.metrics.delay.set(controls.target_delay)
        current = None if self.exit_gate is None else self.exit_gate.exit_at
        if controls.exit_at != current:
            self.exit_gate = None if controls.exit_at is None else ExitGate(controls.exit_at)
        if controls.paused and not self._all_paused:
            self.consumer.pause(self.consumer.assignment())
            self._all_paused = True
        elif not controls.paused and self._all_paused:
            self._all_paused = False
            self._resume([(tp.topic, tp.partition) for tp in self.consumer.assignment()])

    def _exit_point_reached(self) -> bool:
        assert self.exit_gate is not None
        assigned = [(tp.topic, tp.partition) for tp in self.consumer.assignment()]
        if not self.sequencer.held() and self.exit_gate.finished(assigned, self.partitions.watermark):
            log.info("exit point reached: the producer had published every change at or before it, and every one "
                     "is applied and committed", extra={"exit_at": headers.position_text(self.exit_gate.exit_at)})
            return True
        now = time.monotonic()
        if assigned and now - self._exit_logged_at >= 30.0:
            self._exit_logged_at = now
            behind = [f"{t}/{p}" for t, p in assigned
                      if not self.exit_gate.partition_finished((t, p), self.partitions.watermark((t, p)))]
            log.info("waiting for the exit point: these partitions have not yet applied a watermark at or after it "
                     "(is the producer running and past it?)", extra={"partitions": behind[:20]})
        return False

    # ------------------------------------------------------------------------------------------ endpoints

    def ready(self) -> tuple[bool, str]:
        return self.kafka_health.readiness() or self.liveness.readiness(self.controls.paused)

    def status(self) -> dict[str, Any]:
        names = ("kafkashake_consumer_messages_consumed", "kafkashake_consumer_events_applied",
                 "kafkashake_consumer_conflicts", "kafkashake_consumer_dead_letters")
        totals = counter_totals(self.metrics.registry, names)
        applied = {where: state for where, state in self.partitions.items() if state.offset is not None}
        newest: Timestamp | None = max((p.ts for p in applied.values() if p.ts is not None), default=None)
        return {
            "role": "consumer", "group": self.settings.group_id, "subscription": self.settings.subscription,
            "now": describe_position(Timestamp(int(time.time()), 0)),
            "positions": {"applied": describe_position(newest),
                          "partitions": {f"{t}/{p}": {"offset": pos.offset, **(describe_position(pos.ts) or {}),
                                                      "watermark": describe_position(pos.watermark)}
                                         for (t, p), pos in sorted(applied.items())}},
            "lag_seconds": self._lag_seconds(),
            "counters": {name.removeprefix("kafkashake_consumer_"): value for name, value in totals.items()},
            "rates_per_second": {name.removeprefix("kafkashake_consumer_"): value
                                 for name, value in self._rates.rates(totals).items()},
            "paused": self.controls.paused,
            "partitions_paused": sorted(f"{t}/{p}" for t, p in self._held()),
            "target_delay": self.controls.target_delay,
            "exit_at": describe_position(self.controls.exit_at),
            "kafka_unreachable_s": round(self.kafka_health.unreachable_for(), 1) or None,
            "config": sanitized(self.settings),
        }
