"""The producer's main loop, shared by both fetch methods: read, publish, track acknowledgements, checkpoint."""
from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import bson
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from confluent_kafka import Producer

from kafkashake.oplog import position
from kafkashake.oplog.entry import Operation
from kafkashake.producer.change_stream_source import ChangeStreamSource
from kafkashake.producer.checkpoint import Checkpoint, CheckpointStore
from kafkashake.producer.full_sync import FullSync
from kafkashake.producer.leadership import Lease
from kafkashake.producer.metrics import ProducerMetrics
from kafkashake.producer.operations import OperationExtractor
from kafkashake.producer.oplog_reader import OplogReader
from kafkashake.producer.oplog_source import OplogSource
from kafkashake.producer.progress import SyncProgress
from kafkashake.producer.publisher import PRODUCER_DEFAULTS, Publisher
from kafkashake.producer.settings import ProducerSettings
from kafkashake.producer.snapshot_state import SnapshotStore
from kafkashake.runtime import kafka_config, mongo
from kafkashake.runtime.kafka_health import KafkaHealth, KafkaUse
from kafkashake.runtime.kafka_topics import TopicDirectory
from kafkashake.runtime.http_api import ProcessEndpoint
from kafkashake.runtime.logs import RateLimitedLog
from kafkashake.runtime.status import Liveness, RateMeter, RuntimeControls, counter_totals, describe_position, sanitized
from kafkashake.runtime.errors import FatalError
from kafkashake.runtime.retry import Backoff, is_transient, retry_transient
from kafkashake.runtime.shutdown import ShutdownFlag
from kafkashake.schemas import WIRE_VERSION, topics
from kafkashake.schemas.partitioning import PartitionBy

log = logging.getLogger("kafkashake.producer")
REPARTITION_MESSAGE = "kafkashake partitioning changed"
FLUSH_TIMEOUT_S = 60.0
WINDOW_REFRESH_S = 10.0
# Delivery reports are served every this many entries read or this often, and whenever the oplog is read to its end.
ACKNOWLEDGEMENTS_EVERY, ACKNOWLEDGEMENTS_S = 64, 0.01
# With a topic template, the brokers' topic list is read again this often to heartbeat topics of other runs.
TOPIC_LIST_REFRESH_S = 60.0
# Say so in the log when Kafka has acknowledged nothing for this long while messages wait.
ACKNOWLEDGEMENT_STALL_LOG_S = 10.0


class Source(Protocol):
    def first_checkpoint(self, start_position: str) -> Checkpoint: ...
    def start(self, saved: Checkpoint) -> None: ...
    def changes(self) -> Any: ...
    def acknowledged(self, slot: Any) -> None: ...
    def safe_checkpoint(self) -> Checkpoint: ...
    def in_sync(self) -> bool: ...
    def read_position(self) -> Timestamp: ...
    def window(self) -> tuple[Timestamp | None, Timestamp | None]: ...


class ProducerRun:
    def __init__(self, settings: ProducerSettings, shutdown: ShutdownFlag) -> None:
        self.settings = settings
        self.shutdown = shutdown
        self.metrics = ProducerMetrics(settings.fetch_method, settings.encoding.message_format.value)
        self.source_client = mongo.connect(settings.source_uri, "kafkashake-producer")
        self.store_client = (
            mongo.connect(settings.checkpoint_uri, "kafkashake-producer") if settings.checkpoint_uri
            else self.source_client
        )
        collection = self.store_client[settings.checkpoint_db][settings.checkpoint_collection]
        self.store = CheckpointStore(collection, settings.name, settings.fetch_method)
        self.source: Source
        if settings.fetch_method == "change_stream":
            raw_client = mongo.connect(settings.source_uri, "kafkashake-producer", document_class=RawBSONDocument)
            self.source = ChangeStreamSource(raw_client, settings.watch, settings.private_databases, self.metrics,
                                             settings.namespaces)
        else:
            extractor = OperationExtractor(settings.private_databases, settings.namespaces, settings.ddl)
            self.source = OplogSource(OplogReader(self.source_client), extractor, self.metrics)
        self.full_sync = None if settings.sync_mode == "incr" else FullSync(
            settings.sync_mode, settings.snapshot, self.source_client, self.store,
            SnapshotStore(self.store_client[settings.checkpoint_db]["snapshot"], settings.name), settings.namespaces,
            settings.private_databases, self.metrics, shutdown, self._call)
        self.lease = (Lease(self.store_client[settings.checkpoint_db]["lease"], settings.name, settings.ha_lease_s)
                      if settings.ha else None)
        self._window_checked_at = 0.0
        self.controls = RuntimeControls(frozenset({"pause", "resume", "exit_at"}), exit_at=settings.exit_at)
        self._rates = RateMeter()
        self.liveness = Liveness("streaming")
        self._saved: Checkpoint | None = None
        self._source_started = False
        self.progress = SyncProgress()
        self.kafka_health = KafkaHealth("producer", KafkaUse(settings.brokers, settings.topic, writes=True),
                                        settings.startup_timeout_s)
        self._heartbeat_topics: list[str] = []
        self._topics_listed_at = 0.0
        self._heartbeat_at = 0.0
        self._acknowledged_at = time.monotonic()
        self._delivered_seen = 0
        self._stall_log = RateLimitedLog(log, per_window=1, window_s=30.0)
        self._message_timeout_ms = int(settings.kafka_properties.get("message.timeout.ms", 300_000))
        self.endpoint = ProcessEndpoint(self.metrics.registry, self.status, self.ready, self.controls.apply,
                                        settings.control_token)

    def ready(self) -> tuple[bool, str]:
        return self.kafka_health.readiness() or self.liveness.readiness(self.controls.paused)

    def status(self) -> dict[str, Any]:
        names = ("kafkashake_producer_events_read", "kafkashake_producer_events_filtered",
                 "kafkashake_producer_events_published", "kafkashake_producer_delivery_errors")
        totals = counter_totals(self.metrics.registry, names)
        source = self.source
        streaming = self._source_started and self.liveness.started
        read = source.read_position() if streaming else None
        return {
            "role": "producer", "task": self.settings.name, "fetch_method": self.settings.fetch_method,
            "now": describe_position(Timestamp(int(time.time()), 0)),
            "positions": {"read": describe_position(read),
                          "checkpointed": describe_position(self._saved.ts if self._saved else None)},
            "lag_seconds": self.progress.lag_seconds() if streaming else None,
            "counters": {name.removeprefix("kafkashake_producer_"): value for name, value in totals.items()},
            "rates_per_second": {name.removeprefix("kafkashake_producer_"): value
                                 for name, value in self._rates.rates(totals).items()},
            "paused": self.controls.paused,
            "exit_at": describe_position(self.controls.exit_at),
            "snapshot": self.full_sync.status() if self.full_sync else None,
            "ha": None if self.lease is None else {
                "instance": self.lease.instance, "epoch": self.lease.epoch,
                "role": "leader" if self.lease.epoch and not self.lease.lost.is_set() else "standby"},
            "config": sanitized(self.settings),
        }

    def _call(self, action: Callable[[], Any], what: str) -> Any:
        return retry_transient(action, what, lambda: self.shutdown.requested)

    def _starting_checkpoint(self) -> Checkpoint:
        saved = self._call(self.store.load, "loading the checkpoint")
        if saved is not None:
            log.info("resuming from checkpoint", extra={"position": position.describe(saved.ts),
                                                        "fetch_method": saved.fetch_method})
            return saved
        first = self._call(lambda: self.source.first_checkpoint(self.settings.start_position), "resolving the start")
        self._call(lambda: self.store.save(first), "saving the first checkpoint")
        log.info(
            "no checkpoint: starting and checkpointing at once",
            extra={"start_position": self.settings.start_position, "position": position.describe(first.ts)},
        )
        return first

    def _refresh_window(self, checkpoint: Timestamp) -> None:
        now = time.monotonic()
        if now - self._window_checked_at < WINDOW_REFRESH_S:
            return
        self._window_checked_at = now
        try:
            oldest, newest = self.source.window()
        except Exception as exc:  # metrics must never stop replication
            if not is_transient(exc):
                raise
            return
        if oldest is not None and newest is not None:
            self.metrics.oplog_window.set(newest.time - oldest.time)
            self.metrics.resume_headroom.set(checkpoint.time - oldest.time)

    def run(self) -> None:
        settings = self.settings
        self.endpoint.serve(settings.metrics_host, settings.metrics_port)
        stop = lambda: self.shutdown.requested  # noqa: E731
        mongo.ensure_reachable(self.source_client, "source", settings.source_uri, stop, settings.startup_timeout_s)
        if settings.checkpoint_uri:
            mongo.ensure_reachable(self.store_client, "checkpoint store", settings.checkpoint_uri, stop,
                                   settings.startup_timeout_s)
        if self.lease is not None:
            if not self.lease.wait_for_leadership(self.shutdown):
                return
            self._call(lambda: self.store.claim(self.lease.epoch), "claiming the checkpoint")  # type: ignore[union-attr]
        if self.full_sync is None:
            start = self._starting_checkpoint()
        else:
            start = self.full_sync.prepare(lambda: self.source.first_checkpoint("latest"))
        if self.full_sync is None or not self.full_sync.copy_pending:
            # A copy checks its captured position itself, with advice on sizing the oplog.
            self._start_source(start)

        config = kafka_config.client_config(
            settings.brokers, {**PRODUCER_DEFAULTS, "compression.type": settings.compression}, settings.kafka_properties
        )
        directory = TopicDirectory(config, settings.partitions, settings.replication_factor, settings.topic_config,
                                   self.kafka_health)
        if not topics.is_template(settings.topic):
            directory.partitions(settings.topic)
        self._directory = directory
        publisher = Publisher(Producer({**config, **self.kafka_health.client_options()}), directory, settings.topic,
                              settings.name, settings.encoding, settings.partition_by)
        self._refresh_window(start.ts)
        log.info(
            "producer started",
            extra={"topic": settings.topic, "brokers": settings.brokers, "fetch_method": settings.fetch_method,
                   "format": settings.encoding.message_format.value},
        )
        try:
            self.liveness.beat()
            if self.full_sync is not None and self.full_sync.copy_pending:
                if not self.full_sync.copy(publisher, self.source.window, self._beat,
                                           settings.checkpoint_interval_s):
                    return
                self._start_source(start)
            if settings.sync_mode == "full":
                log.info("copy done (--sync-mode full): exiting; a later --sync-mode incr run with this --name "
                         "streams from the position captured before the copy")
                return
            self._announce_repartition(publisher, start)
            self._stream(publisher)
        finally:
            remaining = publisher.flush(FLUSH_TIMEOUT_S)
            final = self.source.safe_checkpoint() if self._source_started else start
            lease_lost = self.lease is not None and self.lease.lost.is_set()
            if publisher.delivery_error is None and self._source_started and not lease_lost:
                self._call(lambda: self.store.save(final), "saving the final checkpoint")
            if self.lease is not None:
                self.lease.release()
            log.info("producer stopped", extra={"checkpoint": position.describe(final.ts), "unacknowledged": remaining})

    def _start_source(self, start: Checkpoint) -> None:
        self._call(lambda: self.source.start(start), "checking the start position")
        self._source_started = True

    def _stream(self, publisher: Publisher) -> None:
        backoff = Backoff()
        last_save = time.monotonic()
        turns, polled_at = 0, time.monotonic()
        while not self.shutdown.requested:
            try:
                for pending in self.source.changes():
                    self._beat()
                    while self.controls.paused and not self.shutdown.requested:
                        publisher.poll(0.2)
                        self._after_acknowledgements(publisher, caught_up=False)
                        self._beat()
                        if time.monotonic() - last_save >= self.settings.checkpoint_interval_s:
                            self._checkpoint()
                            last_save = time.monotonic()
                    for operation, slot in pending or ():
                        if self._past_exit_point(operation.ts):
                            return
                        self._publish(publisher, operation, slot)
                    if pending is None and self._past_exit_point(self.source.read_position()):
                        return
                    publisher.send_due_batches()
                    turns, now = turns + 1, time.monotonic()
                    if pending is None or turns >= ACKNOWLEDGEMENTS_EVERY or now - polled_at >= ACKNOWLEDGEMENTS_S:
                        publisher.poll(0)
                        self._after_acknowledgements(publisher, caught_up=pending is None)
                        turns, polled_at = 0, now
                    backoff.reset()
                    if now - last_save >= self.settings.checkpoint_interval_s:
                        self._checkpoint()
                        last_save = time.monotonic()
                    if self.shutdown.requested:
                        return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay = backoff.next_delay()
                log.warning("source unavailable, retrying", extra={"error": str(exc), "retry_in_s": round(delay, 2)})
                deadline = time.monotonic() + delay
                while not self.shutdown.requested and time.monotonic() < deadline:
                    publisher.poll(min(0.2, max(0.0, deadline - time.monotonic())))
                    self._after_acknowledgements(publisher, caught_up=False)

    def _announce_repartition(self, publisher: Publisher, start: Checkpoint) -> None:
        """A checkpoint saved by a wire-version-1 producer: messages before it were keyed by the _id's exact type,
        after it by value (schemas/partitioning.py), so a document's changes may sit in two partitions. A no-op
        barrier in every partition makes consumers apply everything before it first."""
        saved_version = self.store.loaded_wire_version
        if saved_version is None or saved_version >= WIRE_VERSION or self.settings.partition_by is not PartitionBy.ID:
            return
        targets = self._topics_to_heartbeat(publisher)
        done = threading.Event()
        value = bson.encode({"op": "n", "ns": "", "ts": start.ts, "wall": _dt.datetime.now(tz=_dt.timezone.utc),
                             "o": {"msg": REPARTITION_MESSAGE, "from_wire_version": saved_version,
                                   "to_wire_version": WIRE_VERSION}})
        publisher.barrier(Operation(start.ts, "n", "", None, value), targets, f"{position.describe(start.ts)}:repartition",
                          done.set)
        publisher.flush(FLUSH_TIMEOUT_S)
        if not done.is_set():
            raise FatalError("Kafka did not acknowledge the repartition barrier; restart to send it again")
        self._call(lambda: self.store.save(start, force=True), "recording the wire version in the checkpoint")
        log.warning("upgraded from wire version 1: sent a barrier to every partition so consumers apply every change "
                    "keyed the old way before any keyed the new way", extra={"topics": targets})

    def _after_acknowledgements(self, publisher: Publisher, caught_up: bool) -> None:
        """Delivery reports were just served: fail on a refused message, move the watermark, send heartbeats."""
        if publisher.delivery_error is not None:
            self.metrics.delivery_errors.inc()
            raise FatalError(f"Kafka did not acknowledge a message: {publisher.delivery_error}. "
                             "The checkpoint stays before it; restart to publish again from there")
        if publisher.refused is not None:
            raise FatalError(self.kafka_health.failure(publisher.refused, f"Kafka refused: {publisher.refused.str()}"))
        if self.kafka_health.fatal is not None:
            raise FatalError(self.kafka_health.fatal)
        source = self.source
        watermark = source.safe_checkpoint().ts
        if publisher.delivered != self._delivered_seen:
            self._delivered_seen = publisher.delivered
            self._acknowledged_at = time.monotonic()
            self.kafka_health.reached()
        self.progress.observe(watermark, caught_up and source.in_sync())
        publisher.set_watermark(watermark)
        self._send_heartbeats(publisher)
        self._report_stalled_acknowledgements(publisher)

    def _send_heartbeats(self, publisher: Publisher) -> None:
        interval = self.settings.heartbeat_interval_s
        now = time.monotonic()
        if interval <= 0 or now - self._heartbeat_at < interval:
            return
        self._heartbeat_at = now
        heartbeat = self.progress.heartbeat(interval)
        if heartbeat is not None:
            publisher.heartbeat(self._topics_to_heartbeat(publisher), heartbeat, interval)

    def _topics_to_heartbeat(self, publisher: Publisher) -> list[str]:
        """The topic; with a template, every topic it gives that the brokers have or this run wrote to."""
        template = self.settings.topic
        if not topics.is_template(template):
            return [template]
        now = time.monotonic()
        if now - self._topics_listed_at >= TOPIC_LIST_REFRESH_S:
            self._topics_listed_at = now
            try:
                existing = self._directory.existing()
            except FatalError:
                existing = self._heartbeat_topics
            self._heartbeat_topics = [name for name in existing if topics.matches_template(template, name)]
        return sorted(set(self._heartbeat_topics) | set(publisher.known_topics()))

    def _report_stalled_acknowledgements(self, publisher: Publisher) -> None:
        waiting = publisher.outstanding()
        stalled = time.monotonic() - self._acknowledged_at
        if waiting and stalled >= ACKNOWLEDGEMENT_STALL_LOG_S:
            self._stall_log.warning(
                "Kafka has acknowledged nothing for a while: messages wait; the checkpoint stays before them",
                waiting=waiting, stalled_s=round(stalled), gives_up_after_ms=self._message_timeout_ms,
                kafka_error=self.kafka_health.last_error)
        elif not waiting:
            self._acknowledged_at = time.monotonic()

    def _beat(self) -> None:
        """The main loop turned: tell /readyz, and stop if another instance took the --ha lease."""
        self.liveness.beat()
        if self.lease is not None and self.lease.lost.is_set():
            raise FatalError("lost the --ha lease: another instance leads this task now; stopping without moving "
                             "the checkpoint (restart to stand by)")

    def _past_exit_point(self, ts: Timestamp) -> bool:
        """--exit-at: true once `ts` is beyond the exit point; everything at or before it has been handed over."""
        exit_at = self.controls.exit_at
        if exit_at is None or ts <= exit_at:
            return False
        log.info("exit point reached: every change at or before it is published",
                 extra={"exit_at": position.describe(exit_at)})
        self.shutdown.request()
        return True

    def _publish(self, publisher: Publisher, operation: Operation, slot: Any) -> None:
        handed_at = time.perf_counter()
        metrics, source = self.metrics, self.source

        def acknowledged() -> None:
            source.acknowledged(slot)
            metrics.events_published.inc()
            metrics.publish_seconds.observe(time.perf_counter() - handed_at)

        publisher.publish(operation, acknowledged)

    def _checkpoint(self) -> None:
        safe = self.source.safe_checkpoint()
        self._call(lambda: self.store.save(safe), "saving the checkpoint")
        self._saved = safe
        self.metrics.checkpoint_ts.set(safe.ts.time)
        self.metrics.lag.set(self.progress.lag_seconds())
        self._refresh_window(safe.ts)
