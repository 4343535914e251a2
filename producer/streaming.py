"""The stream phase: read the source's changes, publish them, and move the checkpoint, the watermark and the
heartbeats as Kafka acknowledges them."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, TimeoutError as FutureTimeout
from typing import Any, Protocol

from bson.timestamp import Timestamp

from kafkashake.oplog import position
from kafkashake.oplog.entry import Operation
from kafkashake.producer.acknowledgements import Slot
from kafkashake.producer.checkpoint import Checkpoint, CheckpointStore
from kafkashake.producer.metrics import ProducerMetrics
from kafkashake.producer.progress import SyncProgress
from kafkashake.producer.publisher import Publisher
from kafkashake.producer.settings import ProducerSettings
from kafkashake.runtime.errors import FatalError
from kafkashake.runtime.kafka_health import KafkaHealth
from kafkashake.runtime.kafka_topics import TopicDirectory
from kafkashake.runtime.logs import RateLimitedLog
from kafkashake.runtime.retry import Backoff, is_transient, retry_transient
from kafkashake.runtime.shutdown import ShutdownFlag
from kafkashake.runtime.status import RuntimeControls
from kafkashake.schemas import topics

log = logging.getLogger("kafkashake.producer")
WINDOW_REFRESH_S = 10.0
# Delivery reports are served every this many turns (a turn hands over up to 256 operations) or this often, and
# whenever the source is read to its end.
ACKNOWLEDGEMENTS_EVERY, ACKNOWLEDGEMENTS_S = 64, 0.01
# With a topic template, the brokers' topic list is read again this often to heartbeat topics of other runs.
TOPIC_LIST_REFRESH_S = 60.0
# Say so in the log when Kafka has acknowledged nothing for this long while messages wait.
ACKNOWLEDGEMENT_STALL_LOG_S = 10.0
# A checkpoint write in flight this long is said in the log (the stream goes on meanwhile).
CHECKPOINT_WRITE_SLOW_S = 30.0
# kafkashake_producer_publish_seconds times one operation in this many (timing each one cost a tenth of the loop).
PUBLISH_TIME_SAMPLE_EVERY = 16

Changes = list[tuple[Operation, Slot[Any]]]


class Source(Protocol):
    """Where changes come from: the oplog or a change stream."""

    def first_checkpoint(self, start_position: str) -> Checkpoint: ...
    def start(self, saved: Checkpoint) -> None: ...
    def changes(self) -> Iterator[Changes | None]: ...
    def safe_checkpoint(self) -> Checkpoint: ...
    def in_sync(self) -> bool: ...
    def read_position(self) -> Timestamp: ...
    def window(self) -> tuple[Timestamp | None, Timestamp | None]: ...


class StreamLoop:
    def __init__(self, settings: ProducerSettings, source: Source, publisher: Publisher, directory: TopicDirectory,
                 store: CheckpointStore, metrics: ProducerMetrics, controls: RuntimeControls, health: KafkaHealth,
                 shutdown: ShutdownFlag, beat: Callable[[], None], saved: Checkpoint) -> None:
        self._settings = settings
        self._source = source
        self._publisher = publisher
        self._directory = directory
        self._store = store
        self._metrics = metrics
        self._controls = controls
        self._health = health
        self._shutdown = shutdown
        self._beat = beat
        self.progress = SyncProgress()
        self.saved = saved
        # Checkpoints are written on a thread of their own, so a slow or failing checkpoint database (retried while
        # it fails) holds back the checkpoint, not the stream.
        self._saving: tuple[Checkpoint, Future[None]] | None = None
        self._checkpointing_stopped = threading.Event()
        self._window_checked_at = 0.0
        self._write_started_at = time.monotonic()
        self._heartbeat_at = 0.0
        self._heartbeat_topics: list[str] = []
        self._topics_listed_at = 0.0
        self._acknowledged_at = time.monotonic()
        self._delivered_seen = 0
        self._turns, self._polled_at = 0, time.monotonic()
        self._handed = self._acknowledged = self._acknowledged_counted = 0
        self._publish_times: list[float] = []
        self._stall_log = RateLimitedLog(log, per_window=1, window_s=30.0)
        self._slow_checkpoint_log = RateLimitedLog(log, per_window=1, window_s=CHECKPOINT_WRITE_SLOW_S)
        self._message_timeout_ms = int(settings.kafka.properties.get("message.timeout.ms", 300_000))

    # ---------------------------------------------------------------------------------------------- the loop

    def run(self) -> None:
        """Until shutdown or the exit point; a source that fails transiently is read again from where it was."""
        backoff = Backoff()
        while not self._shutdown.requested:
            try:
                for changes in self._source.changes():
                    if not self._turn(changes):
                        return
                    backoff.reset()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay = backoff.next_delay()
                log.warning("source unavailable, retrying", extra={"error": str(exc), "retry_in_s": round(delay, 2)})
                self._wait(delay)

    def _turn(self, changes: Changes | None) -> bool:
        """One read from the source (None: it was read to its end). False once the loop must stop."""
        self._beat()
        while self._controls.paused and not self._shutdown.requested:
            self._wait(0.2)
        for operation, slot in changes or ():
            if self._past_exit_point(operation.ts):
                return False
            self._publish(operation, slot)
        if changes is None and self._past_exit_point(self._source.read_position()):
            return False
        self._publisher.send_due_batches()
        self._turns += 1
        now = time.monotonic()
        if changes is None or self._turns >= ACKNOWLEDGEMENTS_EVERY or now - self._polled_at >= ACKNOWLEDGEMENTS_S:
            self._publisher.poll(0)
            self._after_acknowledgements(caught_up=changes is None)
            self._turns, self._polled_at = 0, now
        return not self._shutdown.requested

    def _wait(self, seconds: float) -> None:
        """Wait, serving Kafka's acknowledgements and heartbeats meanwhile."""
        deadline = time.monotonic() + seconds
        while not self._shutdown.requested and time.monotonic() < deadline:
            self._publisher.poll(min(0.2, max(0.0, deadline - time.monotonic())))
            self._after_acknowledgements(caught_up=False)
            self._beat()

    def _publish(self, operation: Operation, slot: Slot[Any]) -> None:
        self._handed += 1
        handed_at = None if self._handed % PUBLISH_TIME_SAMPLE_EVERY else time.perf_counter()

        def acknowledged() -> None:
            slot.acknowledge()
            self._acknowledged += 1
            if handed_at is not None:
                self._publish_times.append(time.perf_counter() - handed_at)

        self._publisher.publish(operation, acknowledged)

    def count_acknowledged(self) -> None:
        """Move what Kafka acknowledged since the last call into the metrics."""
        metrics = self._metrics
        if self._acknowledged != self._acknowledged_counted:
            metrics.events_published.inc(self._acknowledged - self._acknowledged_counted)
            self._acknowledged_counted = self._acknowledged
        times, self._publish_times = self._publish_times, []
        for seconds in times:
            metrics.publish_seconds.observe(seconds)

    def _past_exit_point(self, ts: Timestamp) -> bool:
        """--exit-at: true once `ts` is beyond the exit point; everything at or before it has been handed over."""
        exit_at = self._controls.exit_at
        if exit_at is None or ts <= exit_at:
            return False
        log.info("exit point reached: every change at or before it is published",
                 extra={"exit_at": position.describe(exit_at)})
        self._shutdown.request()
        return True

    # ---------------------------------------------------------------------------------------------- acknowledgements

    def _after_acknowledgements(self, caught_up: bool) -> None:
        """Delivery reports were just served: fail on a refused message, move the watermark, send heartbeats,
        save the checkpoint when due."""
        publisher = self._publisher
        if publisher.delivery_error is not None:
            self._metrics.delivery_errors.inc()
            raise FatalError(f"Kafka did not acknowledge a message: {publisher.delivery_error}. "
                             "The checkpoint stays before it; restart to publish again from there")
        if publisher.refused is not None:
            raise FatalError(self._health.failure(publisher.refused, f"Kafka refused: {publisher.refused.str()}"))
        if self._health.fatal is not None:
            raise FatalError(self._health.fatal)
        self.count_acknowledged()
        if publisher.delivered != self._delivered_seen:
            self._delivered_seen = publisher.delivered
            self._acknowledged_at = time.monotonic()
            self._health.reached()
        watermark = self._source.safe_checkpoint().ts
        self.progress.observe(watermark, caught_up and self._source.in_sync())
        publisher.set_watermark(watermark)
        self._send_heartbeats()
        self._report_stalled_acknowledgements()
        self._checkpoint_turn()

    def _checkpoint_turn(self) -> None:
        """Take the result of the write in flight, start the next one when due, and keep the oplog window measured
        against what is saved."""
        since = time.monotonic() - self._write_started_at
        if self._saving is not None and self._saving[1].done():
            self._saved(*self._saving)
        elif self._saving is not None and since >= CHECKPOINT_WRITE_SLOW_S:
            self._slow_checkpoint_log.warning("a checkpoint write has not ended: the saved checkpoint stays behind",
                                              waiting_s=round(since), saved=position.describe(self.saved.ts))
        if self._saving is None and since >= self._settings.checkpoint.interval_s:
            self.save_checkpoint()
        self.refresh_window(self.saved.ts)

    def _send_heartbeats(self) -> None:
        interval = self._settings.topics.heartbeat_interval_s
        now = time.monotonic()
        if interval <= 0 or now - self._heartbeat_at < interval:
            return
        self._heartbeat_at = now
        heartbeat = self.progress.heartbeat(interval)
        if heartbeat is not None:
            self._publisher.heartbeat(self.topics_to_heartbeat(), heartbeat, interval)

    def topics_to_heartbeat(self) -> list[str]:
        """The topic; with a template, every topic it gives that the brokers have or this run wrote to."""
        template = self._settings.topics.template
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
        return sorted(set(self._heartbeat_topics) | set(self._publisher.known_topics()))

    def _report_stalled_acknowledgements(self) -> None:
        waiting = self._publisher.outstanding()
        stalled = time.monotonic() - self._acknowledged_at
        if waiting and stalled >= ACKNOWLEDGEMENT_STALL_LOG_S:
            self._stall_log.warning(
                "Kafka has acknowledged nothing for a while: messages wait; the checkpoint stays before them",
                waiting=waiting, stalled_s=round(stalled), gives_up_after_ms=self._message_timeout_ms,
                kafka_error=self._health.last_error)
        elif not waiting:
            self._acknowledged_at = time.monotonic()

    # ---------------------------------------------------------------------------------------------- checkpoint

    def save_checkpoint(self) -> None:
        """Start writing the safe checkpoint. The stream goes on meanwhile; a write that fails for good raises its
        error on a later turn."""
        safe = self._source.safe_checkpoint()
        self._write_started_at = time.monotonic()
        write: Future[None] = Future()
        self._saving = safe, write
        threading.Thread(target=self._write_checkpoint, args=(safe, write), name="kafkashake-checkpoint",
                         daemon=True).start()

    def _write_checkpoint(self, safe: Checkpoint, write: Future[None]) -> None:
        try:
            retry_transient(lambda: self._store.save(safe), "saving the checkpoint",
                            lambda: self._shutdown.requested or self._checkpointing_stopped.is_set())
        except BaseException as exc:  # noqa: BLE001  raised on the stream's thread
            write.set_exception(exc)
        else:
            write.set_result(None)

    def _saved(self, safe: Checkpoint, write: Future[None]) -> None:
        self._saving = None
        write.result()
        self.saved = safe
        self._metrics.checkpoint_ts.set(safe.ts.time)
        self._metrics.lag.set(self.progress.lag_seconds())

    def stop_checkpointing(self, timeout_s: float) -> None:
        """Let the checkpoint write in flight end (one still retrying gives up), so that no older checkpoint lands
        after the final one."""
        self._checkpointing_stopped.set()
        if self._saving is None:
            return
        safe, write = self._saving
        try:
            error = write.exception(timeout_s)
        except FutureTimeout:
            raise FatalError(f"a checkpoint write did not end within {timeout_s:.0f} s of stopping: not saving the "
                             f"final checkpoint, which that write could land after. The saved checkpoint is "
                             f"{position.describe(self.saved.ts)}, or {position.describe(safe.ts)} if that write "
                             "lands; a restart publishes again from it") from None
        if error is None:
            self._saved(safe, write)
        elif not isinstance(error, InterruptedError):
            self._saving = None
            log.error("saving the checkpoint failed", extra={"position": position.describe(safe.ts),
                                                              "error": str(error)})

    def refresh_window(self, checkpoint: Timestamp) -> None:
        now = time.monotonic()
        if now - self._window_checked_at < WINDOW_REFRESH_S:
            return
        self._window_checked_at = now
        try:
            oldest, newest = self._source.window()
        except Exception as exc:  # metrics must never stop replication
            if not is_transient(exc):
                raise
            return
        if oldest is not None and newest is not None:
            self._metrics.oplog_window.set(newest.time - oldest.time)
            self._metrics.resume_headroom.set(checkpoint.time - oldest.time)
