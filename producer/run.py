"""The producer's main loop: tail, extract, publish, track acknowledgements, checkpoint."""
from __future__ import annotations

import logging
import time

from bson.timestamp import Timestamp

from oplog import position
from oplog.entry import Operation
from producer.checkpoint import CheckpointStore
from producer.delivery import DeliveryTracker
from producer.metrics import ProducerMetrics
from producer.operations import OperationExtractor
from producer.oplog_reader import IDLE, OplogReader
from producer.publisher import PRODUCER_DEFAULTS, Publisher, TopicDirectory
from producer.settings import ProducerSettings
from runtime import kafka_config, metrics_server, mongo
from runtime.errors import FatalError
from runtime.retry import Backoff, is_transient, retry_transient
from runtime.shutdown import ShutdownFlag
from schemas import topics

log = logging.getLogger("kafkashake.producer")
FLUSH_TIMEOUT_S = 60.0
WINDOW_REFRESH_S = 10.0


def resolve_start(spec: str, reader: OplogReader) -> Timestamp:
    """The exclusive start position for `--start-position` when no checkpoint exists."""
    if spec == "latest":
        newest = reader.newest()
        return newest if newest is not None else Timestamp(int(time.time()), 0)
    if spec == "earliest":
        oldest = reader.oldest()
        return position.predecessor(oldest) if oldest is not None else Timestamp(0, 0)
    parsed = position.parse(spec)
    return parsed if "," in spec else position.predecessor(parsed)


class ProducerRun:
    def __init__(self, settings: ProducerSettings, shutdown: ShutdownFlag) -> None:
        self.settings = settings
        self.shutdown = shutdown
        self.metrics = ProducerMetrics(settings.fetch_method, settings.encoding.message_format.value)
        self.source = mongo.connect(settings.source_uri, "kafkashake-producer")
        self.store_client = (
            mongo.connect(settings.checkpoint_uri, "kafkashake-producer") if settings.checkpoint_uri else self.source
        )
        collection = self.store_client[settings.checkpoint_db][settings.checkpoint_collection]
        self.store = CheckpointStore(collection, settings.name, settings.fetch_method)
        self.reader = OplogReader(self.source)
        self.extractor = OperationExtractor(settings.private_databases)
        self._window_checked_at = 0.0

    def _call(self, action, what: str):  # type: ignore[no-untyped-def]
        return retry_transient(action, what, lambda: self.shutdown.requested)

    def _starting_position(self) -> Timestamp:
        saved = self._call(self.store.load, "loading the checkpoint")
        if saved is not None:
            log.info("resuming from checkpoint", extra={"position": position.describe(saved)})
            return saved
        start = self._call(lambda: resolve_start(self.settings.start_position, self.reader), "resolving the start")
        self._call(lambda: self.store.save(start), "saving the first checkpoint")
        log.info(
            "no checkpoint: starting and checkpointing at once",
            extra={"start_position": self.settings.start_position, "position": position.describe(start)},
        )
        return start

    def _refresh_window(self, checkpoint: Timestamp) -> None:
        now = time.monotonic()
        if now - self._window_checked_at < WINDOW_REFRESH_S:
            return
        self._window_checked_at = now
        try:
            oldest, newest = self.reader.oldest(), self.reader.newest()
        except Exception as exc:  # metrics must never stop replication
            if not is_transient(exc):
                raise
            return
        if oldest is not None and newest is not None:
            self.metrics.oplog_window.set(newest.time - oldest.time)
            self.metrics.resume_headroom.set(checkpoint.time - oldest.time)

    def run(self) -> None:
        settings = self.settings
        metrics_server.serve(self.metrics.registry, settings.metrics_host, settings.metrics_port)
        stop = lambda: self.shutdown.requested  # noqa: E731
        mongo.ensure_reachable(self.source, "source", settings.source_uri, stop)
        if settings.checkpoint_uri:
            mongo.ensure_reachable(self.store_client, "checkpoint store", settings.checkpoint_uri, stop)
        start = self._starting_position()
        self._call(lambda: self.reader.check_within_window(start), "checking the oplog window")

        config = kafka_config.client_config(
            settings.brokers, {**PRODUCER_DEFAULTS, "compression.type": settings.compression}, settings.kafka_properties
        )
        directory = TopicDirectory(config, settings.partitions, settings.replication_factor)
        if not topics.is_template(settings.topic):
            directory.partitions(settings.topic)
        publisher = Publisher(config, settings.topic, settings.name, settings.encoding, settings.partition_by, directory)
        tracker = DeliveryTracker(start)
        self._refresh_window(start)
        log.info(
            "producer started",
            extra={"topic": settings.topic, "brokers": settings.brokers, "format": settings.encoding.message_format.value},
        )
        try:
            self._stream(publisher, tracker)
        finally:
            remaining = publisher.flush(FLUSH_TIMEOUT_S)
            final = tracker.safe_position(self.extractor.hold_below())
            if publisher.delivery_error is None:
                self._call(lambda: self.store.save(final), "saving the final checkpoint")
            log.info(
                "producer stopped",
                extra={"checkpoint": position.describe(final), "unacknowledged": remaining},
            )

    def _stream(self, publisher: Publisher, tracker: DeliveryTracker) -> None:
        backoff = Backoff()
        last_save = time.monotonic()
        metrics = self.metrics
        while not self.shutdown.requested:
            resume_at = tracker.read_through
            try:
                self.reader.check_within_window(resume_at)
                for entry in self.reader.tail(resume_at):
                    if entry is IDLE:
                        tracker.caught_up()
                    else:
                        ts = entry["ts"]
                        metrics.events_read.labels(entry["op"]).inc()
                        tracker.read(ts)
                        operations = self.extractor.extract(entry)
                        if not operations:
                            metrics.events_filtered.inc()
                        for operation in operations:
                            self._publish(publisher, tracker, operation)
                    publisher.send_due_batches()
                    publisher.poll(0)
                    backoff.reset()
                    if publisher.delivery_error is not None:
                        metrics.delivery_errors.inc()
                        raise FatalError(
                            f"Kafka did not acknowledge a message: {publisher.delivery_error}. "
                            "The checkpoint stays before it; restart to publish again from there"
                        )
                    if time.monotonic() - last_save >= self.settings.checkpoint_interval_s:
                        self._checkpoint(tracker)
                        last_save = time.monotonic()
                    if self.shutdown.requested:
                        return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay = backoff.next_delay()
                log.warning("source unavailable, retrying", extra={"error": str(exc), "retry_in_s": round(delay, 2)})
                self.shutdown.wait(delay)

    def _publish(self, publisher: Publisher, tracker: DeliveryTracker, operation: Operation) -> None:
        slot = tracker.sent(operation.ts)
        handed_at = time.perf_counter()
        metrics = self.metrics

        def acknowledged() -> None:
            tracker.acknowledged(slot)
            metrics.events_published.inc()
            metrics.publish_seconds.observe(time.perf_counter() - handed_at)

        publisher.publish(operation, acknowledged)

    def _checkpoint(self, tracker: DeliveryTracker) -> None:
        safe = tracker.safe_position(self.extractor.hold_below())
        self._call(lambda: self.store.save(safe), "saving the checkpoint")
        self.metrics.checkpoint_ts.set(safe.time)
        newest_ack = tracker.newest_acknowledged
        self.metrics.lag.set(max(0, tracker.last_read.time - newest_ack.time) if newest_ack else 0)
        self._refresh_window(safe)
