"""The producer's Prometheus metrics."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from kafkashake.runtime.version import VERSION


class ProducerMetrics:
    def __init__(self, fetch_method: str, message_format: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_read = Counter("kafkashake_producer_events_read", "Oplog entries read, by op.", ["op"], registry=r)
        self.events_filtered = Counter(
            "kafkashake_producer_events_filtered", "Entries or operations not published (internal, no-op, ...).", registry=r
        )
        self.events_published = Counter(
            "kafkashake_producer_events_published", "Operations acknowledged by Kafka.", registry=r
        )
        self.history_gaps = Counter(
            "kafkashake_producer_history_gaps",
            "Times the change stream lost its history and restarted at now (--on-history-lost restart-at-now).",
            registry=r,
        )
        self.delivery_errors = Counter("kafkashake_producer_delivery_errors", "Messages Kafka refused.", registry=r)
        self.lag = Gauge(
            "kafkashake_producer_lag_seconds",
            "How far Kafka is behind the source: 0 while everything read is acknowledged and the source read to its "
            "end; grows while the producer cannot read or publish.",
            registry=r,
        )
        self.checkpoint_ts = Gauge(
            "kafkashake_producer_checkpoint_timestamp_seconds", "Source time of the saved checkpoint.", registry=r
        )
        self.resume_headroom = Gauge(
            "kafkashake_producer_resume_headroom_seconds",
            "Checkpoint time minus the oldest oplog entry's time: how far the checkpoint is from falling off. NaN "
            "until measured, and where the oplog cannot be read (through mongos).",
            registry=r,
        )
        self.oplog_window = Gauge(
            "kafkashake_producer_oplog_window_seconds", "Newest minus oldest oplog entry time; NaN until measured.",
            registry=r,
        )
        # Not zero: a headroom of zero would fire the ResumeHeadroomLow alert for a position that is merely unknown.
        self.resume_headroom.set(float("nan"))
        self.oplog_window.set(float("nan"))
        self.publish_seconds = Histogram(
            "kafkashake_producer_publish_seconds",
            "Time from handing an operation to Kafka to its acknowledgement, sampled: one operation in 16.", registry=r
        )
        self.snapshot_copied = Gauge(
            "kafkashake_producer_snapshot_copied_documents",
            "Initial copy: documents of a collection acknowledged by Kafka.", ["namespace"], registry=r,
        )
        self.snapshot_estimated = Gauge(
            "kafkashake_producer_snapshot_estimated_documents",
            "Initial copy: a collection's estimated document count when the copy was planned.", ["namespace"],
            registry=r,
        )
        for op in ("i", "u", "d", "c", "n"):
            self.events_read.labels(op)
        Info("kafkashake_build", "Build and role.", registry=r).info(
            {"version": VERSION, "role": "producer", "fetch_method": fetch_method, "format": message_format}
        )
