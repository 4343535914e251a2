"""The consumer's main loop: poll, hand each poll's messages to the replay, follow /control, and say how far the
destination is behind."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from bson.timestamp import Timestamp
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from kafkashake.consumer import assignment
from kafkashake.consumer.applier import Applier
from kafkashake.consumer.barrier import Barriers, BarrierStore, Subscription
from kafkashake.consumer.checkpoint import ConsumerCheckpointStore
from kafkashake.consumer.conflicts import ConflictRecorder
from kafkashake.consumer.dead_letters import DeadLetters
from kafkashake.consumer.gates import DelayGate, ExitGate
from kafkashake.consumer.intake import PartitionKey, Received
from kafkashake.consumer.metrics import ConsumerMetrics
from kafkashake.consumer.partitions import Partitions
from kafkashake.consumer.replay import Gates, Replay
from kafkashake.consumer.sequencer import Sequencer, UniqueIndexes
from kafkashake.consumer.settings import ConflictTarget, ConsumerSettings, OnError
from kafkashake.consumer.write_lanes import write_lanes
from kafkashake.runtime import mongo, secrets
from kafkashake.runtime.errors import FatalError
from kafkashake.runtime.http_api import ProcessEndpoint
from kafkashake.runtime.kafka_health import KafkaHealth, KafkaUse
from kafkashake.runtime.kafka_topics import admin_config
from kafkashake.runtime.logs import RateLimitedLog
from kafkashake.runtime.retry import retry_transient
from kafkashake.runtime.settings import secret_values
from kafkashake.runtime.shutdown import ShutdownFlag
from kafkashake.runtime.status import Liveness, RateMeter, RuntimeControls, counter_totals, describe_position, sanitized
from kafkashake.schemas import headers

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
EXIT_WAIT_LOG_S = 30.0
# While changes are held for source order, polls return this often so other instances' progress is seen soon.
HELD_POLL_TIMEOUT_S = 0.02


class ConsumerRun:
    def __init__(self, settings: ConsumerSettings, shutdown: ShutdownFlag) -> None:
        secrets.install(secrets.Redactor(secret_values(settings)))
        self.settings = settings
        self.shutdown = shutdown
        self.metrics = ConsumerMetrics()
        group = settings.subscription.group_id
        self.destination = mongo.connect(settings.destination.uri.reveal(), "kafkashake-consumer")
        state_db = mongo.latest(self.destination, settings.destination.checkpoint_db)
        self.store = ConsumerCheckpointStore(state_db[settings.destination.checkpoint_collection], group)
        self.kafka_health = KafkaHealth("consumer", KafkaUse(settings.kafka.brokers, settings.subscription.topic
                                                             or settings.subscription.topic_pattern, group=group),
                                        settings.process.startup_timeout_s)
        config = settings.kafka.client_config({**CONSUMER_DEFAULTS, "group.id": group,
                                               "stats_cb": self.metrics.read_statistics, "on_commit": self._on_commit,
                                               **self.kafka_health.client_options()})
        self._incremental = assignment.is_incremental(config)
        self.consumer = Consumer(config)
        self.admin = AdminClient({**admin_config(config), **self.kafka_health.client_options()})
        self.controls = RuntimeControls(frozenset({"pause", "resume", "target_delay", "exit_at"}),
                                        settings.policy.target_delay_s, settings.exit_at)
        self.replay = self._replay(state_db)
        self._kafka_warnings = RateLimitedLog(log, per_window=1, window_s=30.0)
        self._all_paused = False
        self._rates = RateMeter()
        self.liveness = Liveness("replaying")
        self._partition_counts: dict[str, int] = {}
        self._exit_logged_at = 0.0
        self._lag_known: tuple[float, float] | None = None
        self._topic_ids_read_at = time.monotonic()
        self.endpoint = ProcessEndpoint(self.metrics.registry, self.status, self.ready, self.controls.apply,
                                        settings.process.control_token)
        self.metrics.delay.set(settings.policy.target_delay_s)

    def _replay(self, state_db: Any) -> Replay:
        settings = self.settings
        problems = settings.problems
        dead_letters = (DeadLetters(settings.kafka.client_config({}), settings.dead_letter_topic,
                                    settings.subscription.group_id, self.kafka_health)
                        if problems.on_error is OnError.DLQ else None)
        unique_indexes = self._unique_indexes = UniqueIndexes(self.destination)

        def has_unique_index(ns: str) -> bool:
            return self._call(lambda: unique_indexes(ns), "reading the indexes")

        lanes = write_lanes(settings.destination.write_lanes, self.metrics.write_lanes.set)
        applier = self._applier = Applier(self.destination, settings.private_databases, settings.policy,
                                          dead_letters is not None, has_unique_index, lanes)
        barriers = Barriers(BarrierStore(state_db["ddl_barrier"], settings.subscription.group_id), settings.policy.ddl,
                            Subscription(settings.subscription.topic, settings.subscription.topic_pattern),
                            self._apply_barrier, self._call)
        gates = Gates(ExitGate(settings.exit_at) if settings.exit_at is not None else None,
                      DelayGate(settings.policy.target_delay_s))
        recorder = (ConflictRecorder(self.destination, problems.conflict_db)
                    if problems.conflict_write_to is ConflictTarget.DB else None)
        return Replay(settings, self.consumer, self.store, Partitions(), Sequencer(has_unique_index), barriers, gates,
                      applier, dead_letters, recorder, self.metrics, self._call, self._partition_count)

    def _apply_barrier(self, received: Received) -> None:
        """The DDL of a barrier every partition reached, applied once."""
        report = self._call(lambda: self._applier.apply(received.events, carry_parked=False), "applying DDL")
        self._unique_indexes.forget()  # a collection or index created or dropped: which are ordered may change
        self.replay.account(report)
        for rejection in report.rejected:
            self.replay.dead_letter(received, rejection.reason, rejection.error, rejection.event)

    def _call(self, action: Callable[[], Any], what: str) -> Any:
        return retry_transient(action, what, lambda: self.shutdown.requested)

    # ------------------------------------------------------------------------------------------ assignment

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        points = assignment.resume_points(consumer, self.admin, self.store, partitions, self._call)
        for tp in partitions:
            where = (tp.topic, tp.partition)
            point = points[where]
            state = self.replay.partitions.assign(where)
            state.topic_id = point.topic_id
            state.restore(point.saved)
            self.replay.sequencer.saw(where, None if point.saved is None else point.saved.watermark)
            if point.saved is not None and point.saved.snapshot_until is not None:
                self.replay.gates.overlap.until[where] = point.saved.snapshot_until
            tp.offset = point.offset
        if self._incremental:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.replay.settle()  # the batch being written is checkpointed before its partitions go
        for tp in partitions:  # held messages are read again by the partition's next owner
            self.replay.forget((tp.topic, tp.partition))
        self.metrics.partitions_paused.set(len(self.replay.gates.delay.paused))

    def _notice_recreated_topics(self) -> None:
        """A topic deleted and re-created under the same name while this consumer had it: librdkafka carries on at
        the old offsets, which would skip the new topic's first messages. Read its ids every few seconds; a new id
        sends the topic's partitions back to its start, as a new group would, with a warning."""
        now = time.monotonic()
        if now - self._topic_ids_read_at < TOPIC_ID_CHECK_S or self.kafka_health.unreachable_since is not None:
            return
        self._topic_ids_read_at = now
        owned = self.replay.partitions.items()
        ids = assignment.topic_ids(self.admin, {topic for (topic, _), _ in owned})
        for topic in {topic for (topic, _), state in owned
                      if state.topic_id and ids.get(topic, state.topic_id) != state.topic_id}:
            self._restart_topic(topic, ids[topic])

    def _restart_topic(self, topic: str, topic_id: str) -> None:
        self.replay.settle()
        partitions = [where for where, _ in self.replay.partitions.items() if where[0] == topic]
        log.warning("the topic was deleted and re-created under the same name: reading the new one from its start, "
                    "as a new group would; changes already applied from it apply again, convergently",
                    extra={"topic": topic, "topic_id": topic_id})
        self._partition_counts.pop(topic, None)
        for where in partitions:
            read_to = self.consumer.position([TopicPartition(*where)])[0].offset
            self.replay.forget(where)
            state = self.replay.partitions.assign(where)
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
        self.endpoint.serve(settings.process.metrics_host, settings.process.metrics_port)
        mongo.ensure_reachable(self.destination, "destination", settings.destination.uri.reveal(),
                               lambda: self.shutdown.requested, settings.process.startup_timeout_s)
        self._ensure_kafka_reachable()
        if settings.policy.drop_existing:
            log.warning("--drop-existing is on (it is off by default): each destination collection is dropped when "
                        "the producer's copy of it begins, and documents that exist only in the destination are lost")
        self.consumer.subscribe(settings.subscription.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        log.info("consumer started", extra={"subscription": settings.subscription.topics,
                                            "group": settings.subscription.group_id})
        try:
            while not self.shutdown.requested:
                self._turn()
                if self.replay.gates.exit_point is not None:
                    self.replay.settle()
                    if self._exit_point_reached():
                        break
            self.replay.settle()
        finally:
            self.consumer.close()
            log.info("consumer stopped")

    def _ensure_kafka_reachable(self) -> None:
        try:
            self.consumer.list_topics(timeout=self.settings.process.startup_timeout_s)
        except KafkaException as exc:
            self.consumer.poll(0)  # serve the error callbacks: an authentication failure says more than a timeout
            raise FatalError(self.kafka_health.failure(exc.args[0], (
                f"cannot reach Kafka at {self.settings.kafka.brokers} within "
                f"{self.settings.process.startup_timeout_s:.0f} s: {exc}. Check --brokers, the listeners the brokers "
                "advertise, and the security settings (--kafka-*)"))) from exc
        self.kafka_health.reached()

    def _turn(self) -> None:
        self.liveness.beat()
        if self.kafka_health.fatal is not None:
            raise FatalError(self.kafka_health.fatal)
        self._follow_controls()
        self._resume(self.replay.gates.delay.release_due())
        if released := self.replay.barriers.released():
            self._unique_indexes.forget()  # a DDL applied (maybe by another instance) may change which are ordered
        self._resume(released)
        self._resume(self.replay.sequencer.to_resume())
        for topic, partition in self.replay.sequencer.to_pause():
            self.consumer.pause([TopicPartition(topic, partition)])
        self._notice_recreated_topics()
        settings = self.settings.subscription
        timeout = self.replay.gates.delay.seconds_until_next(settings.poll_timeout_s)
        if self.replay.sequencer.held():  # waiting on other instances' checkpoints, read between polls
            timeout = min(timeout, HELD_POLL_TIMEOUT_S)
        messages = self.consumer.consume(settings.batch_max_messages, timeout)
        if messages:
            self.replay.handle([message for message in messages if self._usable(message)])
            self._mark_read_to_end(messages)
        else:
            self.replay.settle()
            self.replay.release_held()
        self.metrics.partitions_paused.set(len(self._held()))
        self.metrics.lag.set(self._lag_seconds())

    def _usable(self, message: Message) -> bool:
        """Whether a polled message carries data; errors are dealt with here."""
        error = message.error()
        if error is None:
            self.kafka_health.reached()
            return True
        if error.code() == KafkaError._PARTITION_EOF:
            self.kafka_health.reached()
            return False
        fatal = self.kafka_health.use.explain(error)
        if fatal is not None:
            raise FatalError(fatal)
        if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            self._kafka_warnings.warning("topic does not exist (deleted, or not yet created): waiting for it",
                                         topic=message.topic(), error=error.str())
        else:
            self._kafka_warnings.warning("Kafka consumer error, retrying", error=error.str())
        return False

    def _mark_read_to_end(self, messages: list[Message]) -> None:
        """A partition is at its end when the poll's last word on it is librdkafka's end-of-partition event (which
        comes once per arrival at the end, often in the same poll as the message before it)."""
        last: dict[PartitionKey, bool] = {}
        for message in messages:
            error = message.error()
            if error is None or error.code() == KafkaError._PARTITION_EOF:
                last[(message.topic(), message.partition())] = error is not None
        for where, at_end in last.items():
            if at_end and where in self.replay.partitions:
                self.replay.partitions[where].at_end = True

    def _lag_seconds(self) -> float:
        """The partitions' lag; while Kafka is out of reach (the group may have taken them away), the last lag
        known grows by the time since."""
        now = time.time()
        lag = self.replay.partitions.lag_seconds(now)
        if lag is not None:
            self._lag_known = (lag, now)
            return lag
        if self.kafka_health.unreachable_since is not None and self._lag_known is not None:
            known, at = self._lag_known
            return round(known + now - at, 3)
        return 0.0

    def _resume(self, partitions: list[PartitionKey]) -> None:
        if not partitions or self.controls.paused:
            return
        held = self._held()
        self.consumer.resume([TopicPartition(topic, partition) for topic, partition in partitions
                              if (topic, partition) not in held])

    def _held(self) -> set[PartitionKey]:
        replay = self.replay
        exit_point = replay.gates.exit_point
        return (set(replay.gates.delay.paused) | set(replay.barriers.waiting) | replay.sequencer.paused()
                | (exit_point.waiting() if exit_point is not None else set()))

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = [f"{tp.topic}/{tp.partition}" for tp in partitions if tp.error is not None]
        if error is not None or failed:
            # The destination checkpoint already holds these positions: the next owner starts from there instead.
            self._kafka_warnings.warning("offset commit failed; the destination checkpoint covers it",
                                         error=str(error) if error is not None else "", partitions=failed[:8])

    # ------------------------------------------------------------------------------------------ control

    def _follow_controls(self) -> None:
        """Apply /control changes on the main thread, where the Kafka consumer lives."""
        controls, gates = self.controls, self.replay.gates
        if controls.target_delay is not None and controls.target_delay != gates.delay.delay_s:
            gates.delay.delay_s = controls.target_delay
            self.metrics.delay.set(controls.target_delay)
        current = None if gates.exit_point is None else gates.exit_point.exit_at
        if controls.exit_at != current:
            gates.exit_point = None if controls.exit_at is None else ExitGate(controls.exit_at)
        if controls.paused and not self._all_paused:
            self.consumer.pause(self.consumer.assignment())
            self._all_paused = True
        elif not controls.paused and self._all_paused:
            self._all_paused = False
            self._resume([(tp.topic, tp.partition) for tp in self.consumer.assignment()])

    def _exit_point_reached(self) -> bool:
        exit_point = self.replay.gates.exit_point
        assert exit_point is not None
        partitions = self.replay.partitions
        assigned = [(tp.topic, tp.partition) for tp in self.consumer.assignment()]
        unwritten = self.replay.sequencer.held() + len(self.replay.parked)
        if not unwritten and exit_point.finished(assigned, partitions.watermark):
            log.info("exit point reached: the producer had published every change at or before it, and every one "
                     "is applied and committed", extra={"exit_at": headers.position_text(exit_point.exit_at)})
            return True
        now = time.monotonic()
        if assigned and now - self._exit_logged_at >= EXIT_WAIT_LOG_S:
            self._exit_logged_at = now
            behind = [f"{t}/{p}" for t, p in assigned
                      if not exit_point.partition_finished((t, p), partitions.watermark((t, p)))]
            log.info("waiting for the exit point: these partitions have not yet applied a watermark at or after it "
                     "(is the producer running and past it?), or changes wait to be written",
                     extra={"partitions": behind[:20], "changes_unwritten": unwritten})
        return False

    # ------------------------------------------------------------------------------------------ endpoints

    def ready(self) -> tuple[bool, str]:
        return self.kafka_health.readiness() or self.liveness.readiness(self.controls.paused)

    def status(self) -> dict[str, Any]:
        names = ("kafkashake_consumer_messages_consumed", "kafkashake_consumer_events_applied",
                 "kafkashake_consumer_conflicts", "kafkashake_consumer_dead_letters")
        totals = counter_totals(self.metrics.registry, names)
        applied = {where: state for where, state in self.replay.partitions.items() if state.offset is not None}
        newest: Timestamp | None = max((p.ts for p in applied.values() if p.ts is not None), default=None)
        return {
            "role": "consumer", "group": self.settings.subscription.group_id,
            "subscription": self.settings.subscription.topics,
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
