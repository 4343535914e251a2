"""The producer: lease (with --ha) → start position → copy phase (with --sync-mode all|full) → stream phase."""
from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from confluent_kafka import KafkaException, Producer

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
from kafkashake.producer.publisher import PRODUCER_DEFAULTS, Publisher
from kafkashake.producer.settings import FetchMethod, ProducerSettings, SyncMode
from kafkashake.producer.snapshot_state import SnapshotStore
from kafkashake.producer.streaming import Source, StreamLoop
from kafkashake.runtime import mongo, secrets
from kafkashake.runtime.errors import FatalError
from kafkashake.runtime.http_api import ProcessEndpoint
from kafkashake.runtime.kafka_health import KafkaHealth, KafkaUse
from kafkashake.runtime.kafka_topics import TopicDirectory
from kafkashake.runtime.retry import is_transient, retry_transient
from kafkashake.runtime.settings import secret_values
from kafkashake.runtime.shutdown import ShutdownFlag
from kafkashake.runtime.status import Liveness, RateMeter, RuntimeControls, counter_totals, describe_position, sanitized
from kafkashake.schemas import WIRE_VERSION, topics
from kafkashake.schemas.partitioning import PartitionBy

log = logging.getLogger("kafkashake.producer")
FLUSH_TIMEOUT_S = 60.0
FINAL_CHECKPOINT_RETRY_S = 10.0
# How long a refused producer waits for librdkafka to say why.
FATAL_CAUSE_WAIT_S = 30.0
REPARTITION_MESSAGE = "kafkashake partitioning changed"


class ProducerRun:
    def __init__(self, settings: ProducerSettings, shutdown: ShutdownFlag) -> None:
        secrets.install(secrets.Redactor(secret_values(settings)))
        self.settings = settings
        self.shutdown = shutdown
        source, checkpoint = settings.source, settings.checkpoint
        self.metrics = ProducerMetrics(source.fetch_method.value, settings.topics.encoding.message_format.value)
        self.source_client = mongo.connect(source.uri.reveal(), "kafkashake-producer")
        self.store_client = (mongo.connect(checkpoint.uri.reveal(), "kafkashake-producer") if checkpoint.uri
                             else self.source_client)
        state_db = self.store_client[checkpoint.db]
        self.store = CheckpointStore(state_db[checkpoint.collection], checkpoint.name, source.fetch_method.value)
        self.source = self._source()
        self.full_sync = None if source.sync_mode is SyncMode.INCR else FullSync(
            source.sync_mode, source.snapshot, self.source_client, self.store,
            SnapshotStore(state_db["snapshot"], checkpoint.name), source.namespaces, settings.private_databases,
            self.metrics, shutdown, self._call)
        self.lease = Lease(state_db["lease"], checkpoint.name, checkpoint.ha_lease_s) if checkpoint.ha else None
        self.controls = RuntimeControls(frozenset({"pause", "resume", "exit_at"}), exit_at=settings.exit_at)
        self.kafka_health = KafkaHealth("producer", KafkaUse(settings.kafka.brokers, settings.topics.template,
                                                             writes=True), settings.process.startup_timeout_s)
        self.liveness = Liveness("streaming")
        self.stream: StreamLoop | None = None
        self._rates = RateMeter()
        self.endpoint = ProcessEndpoint(self.metrics.registry, self.status, self.ready, self.controls.apply,
                                        settings.process.control_token)

    def _source(self) -> Source:
        settings = self.settings
        source = settings.source
        if source.fetch_method is FetchMethod.CHANGE_STREAM:
            raw_client = mongo.connect(source.uri.reveal(), "kafkashake-producer", document_class=RawBSONDocument)
            return ChangeStreamSource(raw_client, source.watch, settings.private_databases, self.metrics,
                                      source.namespaces)
        extractor = OperationExtractor(settings.private_databases, source.namespaces, source.ddl)
        return OplogSource(OplogReader(self.source_client), extractor, self.metrics)

    def _call(self, action: Callable[[], Any], what: str) -> Any:
        return retry_transient(action, what, lambda: self.shutdown.requested)

    # ---------------------------------------------------------------------------------------------- phases

    def run(self) -> None:
        self.endpoint.serve(self.settings.process.metrics_host, self.settings.process.metrics_port)
        self._reach_servers()
        if not self._lead():
            return
        start = self._start_position()
        publisher, directory = self._publisher()
        started = False
        try:
            self.liveness.beat()
            if not self._copy_phase(publisher, start):
                return
            self._call(lambda: self.source.start(start), "checking the start position")
            started = True
            if self.settings.source.sync_mode is SyncMode.FULL:
                log.info("copy done (--sync-mode full): exiting; a later --sync-mode incr run with this --name "
                         "streams from the position captured before the copy")
                return
            self.stream = StreamLoop(self.settings, self.source, publisher, directory, self.store, self.metrics,
                                     self.controls, self.kafka_health, self.shutdown, self._beat, start)
            self._announce_repartition(publisher, start)
            self.stream.refresh_window(start.ts)
            try:
                self.stream.run()
            except FatalError as exc:
                self._explain_fatal(publisher, isinstance(exc.__cause__, KafkaException))
                raise
        finally:
            self._stop(publisher, start, started)

    def _reach_servers(self) -> None:
        settings, stop = self.settings, lambda: self.shutdown.requested
        timeout = settings.process.startup_timeout_s
        mongo.ensure_reachable(self.source_client, "source", settings.source.uri.reveal(), stop, timeout)
        if settings.checkpoint.uri:
            mongo.ensure_reachable(self.store_client, "checkpoint store", settings.checkpoint.uri.reveal(), stop,
                                   timeout)

    def _lead(self) -> bool:
        """--ha: wait to be the leader and claim the checkpoint; False on shutdown while standing by."""
        if self.lease is None:
            return True
        if not self.lease.wait_for_leadership(self.shutdown):
            return False
        epoch = self.lease.epoch
        self._call(lambda: self.store.claim(epoch), "claiming the checkpoint")  # type: ignore[arg-type]
        return True

    def _start_position(self) -> Checkpoint:
        """Where the stream starts: the checkpoint; with no checkpoint, --start-position (checkpointed at once),
        or the position a copy captures before it begins."""
        if self.full_sync is not None:
            return self.full_sync.prepare(lambda: self.source.first_checkpoint("latest"))
        saved = self._call(self.store.load, "loading the checkpoint")
        if saved is not None:
            log.info("resuming from checkpoint", extra={"position": position.describe(saved.ts),
                                                        "fetch_method": saved.fetch_method})
            return saved
        start_position = self.settings.source.start_position
        first = self._call(lambda: self.source.first_checkpoint(start_position), "resolving the start")
        self._call(lambda: self.store.save(first), "saving the first checkpoint")
        log.info("no checkpoint: starting and checkpointing at once",
                 extra={"start_position": start_position, "position": position.describe(first.ts)})
        return first

    def _publisher(self) -> tuple[Publisher, TopicDirectory]:
        settings = self.settings
        topic_settings = settings.topics
        config = settings.kafka.client_config({**PRODUCER_DEFAULTS, "compression.type": topic_settings.compression.value})
        directory = TopicDirectory(config, topic_settings.partitions, topic_settings.replication_factor,
                                   topic_settings.topic_config, self.kafka_health)
        if not topics.is_template(topic_settings.template):
            directory.partitions(topic_settings.template)
        publisher = Publisher(Producer({**config, **self.kafka_health.client_options()}), directory,
                              topic_settings.template, settings.checkpoint.name, topic_settings.encoding,
                              topic_settings.partition_by)
        log.info("producer started", extra={"topic": topic_settings.template, "brokers": settings.kafka.brokers,
                                            "fetch_method": settings.source.fetch_method.value,
                                            "format": topic_settings.encoding.message_format.value})
        return publisher, directory

    def _copy_phase(self, publisher: Publisher, start: Checkpoint) -> bool:
        """The copy of existing data, if one is due; False if a shutdown interrupted it."""
        if self.full_sync is None or not self.full_sync.copy_pending:
            return True
        return self.full_sync.copy(publisher, self.source.window, self._beat, self.settings.checkpoint.interval_s)

    def _explain_fatal(self, publisher: Publisher, kafka_refused: bool) -> None:
        """librdkafka's fatal produce error names no cause; a later poll raises the cause (a missing permission, for
        instance), or its error callback names it: when Kafka refused, serve events until one does, and raise its
        explanation instead."""
        deadline = time.monotonic() + (FATAL_CAUSE_WAIT_S if kafka_refused else 0.0)
        while True:
            with contextlib.suppress(Exception):
                publisher.poll(0.1)
            cause = publisher.refused
            explanation = self.kafka_health.fatal or (self.kafka_health.use.explain(cause) if cause else None)
            if explanation is not None or time.monotonic() >= deadline:
                break
        if explanation is not None:
            raise FatalError(explanation) from None

    def _stop(self, publisher: Publisher, start: Checkpoint, started: bool) -> None:
        try:
            remaining = publisher.flush(FLUSH_TIMEOUT_S)
        except Exception as exc:  # a client already failed for good: the error that stopped us is the one to report
            log.warning("flushing Kafka on the way out failed", extra={"error": str(exc)})
            remaining = publisher.outstanding()
        if self.stream is not None:
            self.stream.stop_checkpointing(FINAL_CHECKPOINT_RETRY_S)
            self.stream.count_acknowledged()
        final = self.source.safe_checkpoint() if started else start
        lease_lost = self.lease is not None and self.lease.lost.is_set()
        if publisher.delivery_error is None and publisher.refused is None and started and not lease_lost:
            self._save_final(final)
        if self.lease is not None:
            self.lease.release()
        log.info("producer stopped", extra={"checkpoint": position.describe(final.ts), "unacknowledged": remaining})

    def _save_final(self, final: Checkpoint) -> None:
        """The last checkpoint, retried for a while even though the process is stopping: the stream may have run
        far past the one saved before while the checkpoint database failed."""
        try:
            retry_transient(lambda: self.store.save(final), "saving the final checkpoint",
                            give_up_after_s=FINAL_CHECKPOINT_RETRY_S)
        except Exception as exc:
            if not is_transient(exc):
                raise
            saved = self.stream.saved if self.stream is not None else final
            raise FatalError(
                f"could not save the final checkpoint {position.describe(final.ts)}: {exc}. The checkpoint stays at "
                f"{position.describe(saved.ts)}; a restart publishes again from there (consumers apply repeated "
                "changes convergently)") from exc

    def _beat(self) -> None:
        """The main loop turned: tell /readyz, and stop if another instance took the --ha lease."""
        self.liveness.beat()
        if self.lease is not None and self.lease.lost.is_set():
            raise FatalError("lost the --ha lease: another instance leads this task now; stopping without moving "
                             "the checkpoint (restart to stand by)")

    def _announce_repartition(self, publisher: Publisher, start: Checkpoint) -> None:
        """A checkpoint saved by a wire-version-1 producer: messages before it were keyed by the _id's exact type,
        after it by value (schemas/partitioning.py), so a document's changes may sit in two partitions. A no-op
        barrier in every partition makes consumers apply everything before it first."""
        saved_version = self.store.loaded_wire_version
        if (saved_version is None or saved_version >= WIRE_VERSION
                or self.settings.topics.partition_by is not PartitionBy.ID or self.stream is None):
            return
        targets = self.stream.topics_to_heartbeat()
        done = threading.Event()
        value = bson.encode({"op": "n", "ns": "", "ts": start.ts, "wall": _dt.datetime.now(tz=_dt.timezone.utc),
                             "o": {"msg": REPARTITION_MESSAGE, "from_wire_version": saved_version,
                                   "to_wire_version": WIRE_VERSION}})
        publisher.barrier(Operation(start.ts, "n", "", None, value), targets,
                          f"{position.describe(start.ts)}:repartition", done.set)
        publisher.flush(FLUSH_TIMEOUT_S)
        if not done.is_set():
            raise FatalError("Kafka did not acknowledge the repartition barrier; restart to send it again")
        self._call(lambda: self.store.save(start, force=True), "recording the wire version in the checkpoint")
        log.warning("upgraded from wire version 1: sent a barrier to every partition so consumers apply every change "
                    "keyed the old way before any keyed the new way", extra={"topics": targets})

    # ---------------------------------------------------------------------------------------------- endpoints

    def ready(self) -> tuple[bool, str]:
        return self.kafka_health.readiness() or self.liveness.readiness(self.controls.paused)

    def status(self) -> dict[str, Any]:
        names = ("kafkashake_producer_events_read", "kafkashake_producer_events_filtered",
                 "kafkashake_producer_events_published", "kafkashake_producer_delivery_errors")
        totals = counter_totals(self.metrics.registry, names)
        stream = self.stream
        streaming = stream is not None and self.liveness.started
        saved = stream.saved if stream is not None else None
        return {
            "role": "producer", "task": self.settings.checkpoint.name,
            "fetch_method": self.settings.source.fetch_method.value,
            "now": describe_position(Timestamp(int(time.time()), 0)),
            "positions": {"read": describe_position(self.source.read_position() if streaming else None),
                          "checkpointed": describe_position(saved.ts if saved else None)},
            "lag_seconds": stream.progress.lag_seconds() if streaming else None,  # type: ignore[union-attr]
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
