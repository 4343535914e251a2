"""The consumer's main loop: poll a batch, decode, apply, checkpoint in the destination, commit offsets."""
from __future__ import annotations

import json
import logging
import time
from typing import Any

from bson.timestamp import Timestamp
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer.applier import Applier
from consumer.barrier import BarrierStore
from consumer.checkpoint import ConsumerCheckpointStore, PartitionPosition
from consumer.conflicts import Conflict, ConflictRecorder, describe
from consumer.dead_letters import UNDECODABLE, DeadLetters
from consumer.decoder import Event, UndecodableMessage, decode_message
from consumer.delay import DelayGate, source_time
from consumer.exit_point import ExitPoint
from consumer.metrics import ConsumerMetrics
from consumer.settings import ConsumerSettings
from runtime import kafka_config, mongo
from runtime.errors import FatalError
from runtime.http_api import ProcessEndpoint
from runtime.logs import RateLimitedLog
from runtime.retry import retry_transient
from runtime.shutdown import ShutdownFlag
from runtime.status import Liveness, RateMeter, RuntimeControls, counter_totals, describe_position, sanitized
from schemas import headers, snapshot

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


class ConsumerRun:
    def __init__(self, settings: ConsumerSettings, shutdown: ShutdownFlag) -> None:
        self.settings = settings
        self.shutdown = shutdown
        self.metrics = ConsumerMetrics()
        self.destination = mongo.connect(settings.dest_uri, "kafkashake-consumer")
        collection = self.destination[settings.checkpoint_db][settings.checkpoint_collection]
        self.store = ConsumerCheckpointStore(collection, settings.group_id)
        self._conflict_log = RateLimitedLog(logging.getLogger("kafkashake.consumer.conflicts"))
        self._kafka_warnings = RateLimitedLog(log, per_window=1, window_s=30.0)
        private = frozenset({settings.checkpoint_db, settings.conflict_db})
        kafka = kafka_config.client_config(settings.brokers, {}, settings.kafka_properties)
        self.dead_letters = (DeadLetters(kafka, settings.dead_letter_topic_name, settings.group_id)
                             if settings.on_error == "dlq" else None)
        self._messages: dict[tuple[str, int, int], Message] = {}
        self.applier = Applier(self.destination, private, self._on_conflict, settings.policy,
                               self._on_rejected if self.dead_letters else None)
        self.recorder = (ConflictRecorder(self.destination, settings.conflict_db)
                         if settings.conflict_write_to == "db" else None)
        self.delay = DelayGate(settings.target_delay_s)
        self.exit_point = ExitPoint(settings.exit_at) if settings.exit_at is not None else None
        self.barriers = BarrierStore(self.destination[settings.checkpoint_db]["ddl_barrier"], settings.group_id)
        self._waiting: dict[tuple[str, int], tuple[str, list[Event]]] = {}
        self.controls = RuntimeControls(frozenset({"pause", "resume", "target_delay", "exit_at"}),
                                        settings.target_delay_s, settings.exit_at)
        self._all_paused = False
        self._rates = RateMeter()
        self.liveness = Liveness("replaying")
        self._applied: dict[tuple[str, int], PartitionPosition] = {}
        self._snapshot_until: dict[tuple[str, int], Any] = {}
        self.endpoint = ProcessEndpoint(self.metrics.registry, self.status, self.ready, self.controls.apply,
                                        settings.control_token)
        self.metrics.delay.set(settings.target_delay_s)
        config = kafka_config.client_config(
            settings.brokers, {**CONSUMER_DEFAULTS, "group.id": settings.group_id, "stats_cb": self._on_statistics},
            settings.kafka_properties,
        )
        self.consumer = Consumer(config)

    def _on_conflict(self, conflict: Conflict) -> None:
        self.metrics.conflicts.labels(conflict.kind).inc()
        self._conflict_log.warning("conflict: destination left as it is", **describe(conflict))
        if self.recorder is not None:
            self._call(lambda: self.recorder.record(conflict), "recording a conflict")  # type: ignore[union-attr]

    def _on_rejected(self, event: Event, reason: str, error: str) -> None:
        message = self._messages[(event.topic, event.partition, event.offset)]
        self._dead_letter(message, reason, f"{error}; event {event.fields.get('op')} on {event.ns}")

    def _dead_letter(self, message: Message, reason: str, error: str) -> None:
        assert self.dead_letters is not None
        self._call(lambda: self.dead_letters.send(message, reason, error), "writing a dead letter")  # type: ignore[union-attr]
        self.metrics.dead_letters.labels(reason).inc()

    def _call(self, action, what: str):  # type: ignore[no-untyped-def]
        return retry_transient(action, what, lambda: self.shutdown.requested)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(partitions, timeout=30)}
        for tp in partitions:
            saved = self._call(lambda: self.store.load(tp.topic, tp.partition), "loading the consumer checkpoint")
            kafka_offset = committed.get((tp.topic, tp.partition), OFFSET_INVALID)
            resume = kafka_offset if kafka_offset >= 0 else OFFSET_INVALID
            if saved is not None and saved.offset + 1 > resume:
                resume = saved.offset + 1
            if saved is not None and saved.snapshot_until is not None:
                self._snapshot_until[(tp.topic, tp.partition)] = saved.snapshot_until
            tp.offset = resume
            log.info(
                "partition assigned",
                extra={"topic": tp.topic, "partition": tp.partition, "committed": kafka_offset,
                       "checkpoint": None if saved is None else saved.offset, "resume_offset": resume},
            )
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.delay.forget([(tp.topic, tp.partition) for tp in partitions])
        for tp in partitions:  # the barrier message is re-read by the partition's next owner
            self._waiting.pop((tp.topic, tp.partition), None)
        self.metrics.partitions_paused.set(len(self.delay.paused))

    def run(self) -> None:
        settings = self.settings
        self.endpoint.serve(settings.metrics_host, settings.metrics_port)
        mongo.ensure_reachable(self.destination, "destination", settings.dest_uri, lambda: self.shutdown.requested,
                               settings.startup_timeout_s)
        if settings.policy.drop_existing:
            log.warning("--drop-existing is on (it is off by default): each destination collection is dropped when "
                        "the producer's copy of it begins, and documents that exist only in the destination are lost")
        self.consumer.subscribe(settings.subscription, on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("consumer started", extra={"subscription": settings.subscription, "group": settings.group_id})
        try:
            while not self.shutdown.requested:
                self.liveness.beat()
                self._follow_controls()
                self._resume_due_partitions()
                self._pass_applied_barriers()
                timeout = self.delay.seconds_until_next(settings.poll_timeout_s)
                messages = self.consumer.consume(settings.batch_max_messages, timeout)
                if messages:
                    self._handle(messages)
                if self.exit_point is not None and self._exit_point_reached():
                    break
        finally:
            self.consumer.close()
            log.info("consumer stopped")

    def ready(self) -> tuple[bool, str]:
        return self.liveness.readiness(self.controls.paused)

    def status(self) -> dict[str, Any]:
        names = ("kafkashake_consumer_messages_consumed", "kafkashake_consumer_events_applied",
                 "kafkashake_consumer_conflicts", "kafkashake_consumer_dead_letters")
        totals = counter_totals(self.metrics.registry, names)
        applied = dict(self._applied)
        newest = max((p.ts for p in applied.values() if p.ts is not None), default=None)
        return {
            "role": "consumer", "group": self.settings.group_id, "subscription": self.settings.subscription,
            "now": describe_position(Timestamp(int(time.time()), 0)),
            "positions": {"applied": describe_position(newest),
                          "partitions": {f"{t}/{p}": {"offset": pos.offset, **(describe_position(pos.ts) or {})}
                                         for (t, p), pos in sorted(applied.items())}},
            "lag_seconds": round(time.time() - newest.time, 1) if newest else None,
            "counters": {name.removeprefix("kafkashake_consumer_"): value for name, value in totals.items()},
            "rates_per_second": {name.removeprefix("kafkashake_consumer_"): value
                                 for name, value in self._rates.rates(totals).items()},
            "paused": self.controls.paused,
            "partitions_paused": sorted(f"{t}/{p}" for t, p in self.delay.paused),
            "target_delay": self.controls.target_delay,
            "exit_at": describe_position(self.controls.exit_at),
            "config": sanitized(self.settings),
        }

    def _follow_controls(self) -> None:
        """Apply /control changes on the main thread, where the Kafka consumer lives."""
        controls = self.controls
        if controls.target_delay is not None and controls.target_delay != self.delay.delay_s:
            self.delay.delay_s = controls.target_delay
            self.metrics.delay.set(controls.target_delay)
        current = None if self.exit_point is None else self.exit_point.exit_at
        if controls.exit_at != current:
            self.exit_point = None if controls.exit_at is None else ExitPoint(controls.exit_at)
        if controls.paused and not self._all_paused:
            self.consumer.pause(self.consumer.assignment())
            self._all_paused = True
        elif not controls.paused and self._all_paused:
            held = set(self.delay.paused) | set(self._waiting)
            self.consumer.resume([tp for tp in self.consumer.assignment() if (tp.topic, tp.partition) not in held])
            self._all_paused = False

    def _on_statistics(self, document: str) -> None:
        """librdkafka's statistics (every statistics.interval.ms) already hold each partition's lag in messages."""
        try:
            topics = json.loads(document).get("topics", {})
        except ValueError:
            return
        for topic in topics.values():
            for partition, values in topic.get("partitions", {}).items():
                lag = values.get("consumer_lag", -1)
                if partition != "-1" and lag >= 0:
                    self.metrics.kafka_lag.labels(partition).set(lag)

    def _exit_point_reached(self) -> bool:
        assert self.exit_point is not None
        assigned = [(tp.topic, tp.partition) for tp in self.consumer.assignment()]
        if not self.exit_point.finished(assigned):
            return False
        log.info("exit point reached: every event at or before it is applied and committed",
                 extra={"exit_at": f"{self.exit_point.exit_at.time},{self.exit_point.exit_at.inc}"})
        return True

    def _resume_due_partitions(self) -> None:
        if self.controls.paused:
            return
        due = self.delay.release_due()
        if due:
            self.consumer.resume([TopicPartition(topic, partition) for topic, partition in due])
            self.metrics.partitions_paused.set(len(self.delay.paused))

    def _handle(self, messages: list[Message]) -> None:
        events: list[Event] = []
        positions: dict[tuple[str, int], PartitionPosition] = {}
        held: set[tuple[str, int]] = set()
        arrivals: list[tuple[str, str, int, int]] = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    if self.exit_point is not None:
                        self.exit_point.reached_end((message.topic(), message.partition()))
                    continue
                if error.fatal() or error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                    raise FatalError(f"Kafka consumer error: {error}. Check the topic name and the ACLs")
                self._kafka_warnings.warning("Kafka consumer error, retrying", error=str(error))
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if (topic, partition) in held:
                continue  # rewound: comes back once the partition is resumed
            try:
                decoded = decode_message(message.value(), topic, partition, offset)
            except UndecodableMessage as exc:
                if self.dead_letters is None:
                    if positions:  # everything before it is applied and committed first
                        self._apply(events, positions)
                    raise FatalError(
                        f"message {topic}/{partition}@{offset} cannot be decoded: {exc}. The consumer stops rather "
                        "than skip it; inspect it (kafkashake inspect) and restart, or run with --on-error dlq"
                    ) from exc
                self._dead_letter(message, UNDECODABLE, str(exc))
                positions[(topic, partition)] = PartitionPosition(topic, partition, offset, None,
                                                                  self._snapshot_until.get((topic, partition)))
                continue
            self._messages[(topic, partition, offset)] = message
            message_headers = headers.as_dict(message.headers())
            follows_barriers = self.settings.policy.ddl or message_headers.get(headers.SNAPSHOT) == "true"
            barrier = message_headers.get(headers.BARRIER) if follows_barriers else None
            if barrier is not None:
                if self._call(lambda: self.barriers.is_applied(barrier), "reading a DDL barrier"):
                    positions[(topic, partition)] = PartitionPosition(
                        topic, partition, offset, decoded[-1].fields.get("ts"), self._snapshot_until.get((topic, partition)))
                    continue  # applied while this partition waited: move past it
                self._hold_back(topic, partition, offset, held)
                partitions = int(message_headers.get(headers.BARRIER_PARTITIONS, "1"))
                self._waiting[(topic, partition)] = (barrier, decoded)
                arrivals.append((barrier, topic, partition, partitions))
                continue
            if self.exit_point is not None:
                self.exit_point.received((topic, partition))
                if any(self.exit_point.is_past(event.fields.get("ts")) for event in decoded):
                    self._hold_back(topic, partition, offset, held)
                    self.exit_point.passed((topic, partition))
                    continue
            self._mark_convergent(topic, partition, decoded)
            if self.delay.delay_s > 0:
                # --target-delay holds back changes, not the copy of what already existed.
                newest = max((source_time(event.fields) for event in decoded
                              if not snapshot.is_snapshot(event.fields)), default=0.0)
                if not self.delay.is_due(newest):
                    self._hold_back(topic, partition, offset, held)
                    self.delay.hold((topic, partition), newest)
                    self.metrics.partitions_paused.set(len(self.delay.paused))
                    continue
            events.extend(decoded)
            ts = decoded[-1].fields.get("ts") if decoded else None
            positions[(topic, partition)] = PartitionPosition(topic, partition, offset, ts,
                                                              self._snapshot_until.get((topic, partition)))
        self.metrics.messages_consumed.inc(sum(1 for message in messages if message.error() is None))
        if positions:
            self._apply(events, positions)
        waiting = {(t, p, events_[0].offset) for (t, p), (_, events_) in self._waiting.items() if events_}
        self._messages = {key: message for key, message in self._messages.items() if key in waiting}
        for barrier, topic, partition, partitions in arrivals:  # everything before the barrier is applied now
            self._call(lambda: self.barriers.arrive(barrier, topic, partition, partitions), "recording a DDL arrival")
            self._apply_barrier_if_complete(barrier, self._waiting[(topic, partition)][1])

    def _mark_convergent(self, topic: str, partition: int, events: list[Event]) -> None:
        """Snapshot documents, and changes the copy may already hold (up to its completion event's `until`), are
        applied so that they converge whatever the conflict policy."""
        key = (topic, partition)
        for event in events:
            fields = event.fields
            until = snapshot.completion_until(fields)
            if until is not None:
                self._snapshot_until[key] = until
                log.info("copy complete in this partition; changes up to its end are applied as overlapping it",
                         extra={"topic": topic, "partition": partition, "until": f"{until.time},{until.inc}"})
            elif snapshot.is_snapshot(fields):
                event.converge = True
            else:
                horizon = self._snapshot_until.get(key)
                ts = fields.get("ts")
                event.converge = horizon is not None and ts is not None and ts <= horizon

    def _apply_barrier_if_complete(self, barrier: str, ddl_events: list[Event]) -> None:
        if not self._call(lambda: self.barriers.claim(barrier), "claiming a DDL barrier"):
            return
        report = self._call(lambda: self.applier.apply(ddl_events), "applying DDL")
        for op, count in report.applied.items():
            self.metrics.events_applied.labels(op).inc(count)
        self._call(lambda: self.barriers.mark_applied(barrier), "releasing a DDL barrier")
        log.info("DDL barrier passed: applied after every partition reached it", extra={"barrier": barrier})

    def _pass_applied_barriers(self) -> None:
        """Resume partitions whose barrier is applied; they re-read the barrier message and move past it."""
        for (topic, partition), (barrier, ddl_events) in list(self._waiting.items()):
            self._apply_barrier_if_complete(barrier, ddl_events)
            if self._call(lambda: self.barriers.is_applied(barrier), "reading a DDL barrier"):
                del self._waiting[(topic, partition)]
                self.consumer.resume([TopicPartition(topic, partition)])

    def _apply(self, events: list[Event], positions: dict[tuple[str, int], PartitionPosition]) -> None:
        started = time.perf_counter()
        report = self._call(lambda: self.applier.apply(events), "applying a batch")
        self.metrics.bulk_write_seconds.observe(time.perf_counter() - started)
        for op, count in report.applied.items():
            self.metrics.events_applied.labels(op).inc(count)
        for reason, count in report.passed_over.items():
            self.metrics.events_passed_over.labels(reason).inc(count)
        checkpointed = list(positions.values())
        self._call(lambda: self.store.save(checkpointed), "saving the consumer checkpoint")
        self._commit(checkpointed)
        self._applied.update(positions)
        newest = max((p.ts for p in checkpointed if p.ts is not None), default=None)
        if newest is not None:
            self.metrics.checkpoint_ts.set(newest.time)
            self.metrics.lag.set(max(0.0, time.time() - newest.time))

    def _hold_back(self, topic: str, partition: int, offset: int, held: set[tuple[str, int]]) -> None:
        """Leave this message and the rest of its partition unapplied: rewind to it and pause the partition."""
        self.consumer.seek(TopicPartition(topic, partition, offset))
        self.consumer.pause([TopicPartition(topic, partition)])
        held.add((topic, partition))

    def _commit(self, positions: list[PartitionPosition]) -> None:
        offsets = [TopicPartition(p.topic, p.partition, p.offset + 1) for p in positions]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # The destination checkpoint already holds these positions; a failed commit only means the
            # next owner of the partition starts from there instead.
            log.warning("offset commit failed; the destination checkpoint covers it", extra={"error": str(exc)})
