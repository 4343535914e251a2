"""The initial copy (`--sync-mode all|full`): existing collections, indexes and documents, through Kafka.

Reader threads (`--snapshot-parallel`) each read one `_id` range at a time in `_id` order and hand batches
of raw documents to the main thread, which alone publishes, so per-partition order and the publisher stay
single-threaded. A range's progress moves past a batch once Kafka acknowledged all of it, and is saved with
the rest of the copy's state every checkpoint interval: a restart re-reads at most the unacknowledged tail."""
from __future__ import annotations

import datetime as _dt
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import MongoClient

from kafkashake.oplog import position
from kafkashake.oplog.entry import Operation
from kafkashake.producer.metrics import ProducerMetrics
from kafkashake.producer.acknowledgements import AckQueue
from kafkashake.schemas.partitioning import key_text
from kafkashake.producer.publisher import Publisher
from kafkashake.producer.settings import IndexCreation, SnapshotSettings
from kafkashake.producer.snapshot_state import COMPLETE, CollectionState, RangeState, SnapshotState, SnapshotStore
from kafkashake.runtime.errors import FatalError
from kafkashake.runtime.retry import Backoff, is_transient
from kafkashake.runtime.shutdown import ShutdownFlag
from kafkashake.schemas import snapshot as snapshot_events

log = logging.getLogger("kafkashake.producer.snapshot")
PROGRESS_LOG_S = 5.0
QUEUE_BATCHES_PER_READER = 2
_END = object()
RAW = CodecOptions(document_class=RawBSONDocument)


class _RangeProgress:
    """One `_id` range's documents handed to Kafka in read batches of (last `_id`, count)."""

    def __init__(self, collection: CollectionState, state: RangeState) -> None:
        self.collection = collection
        self.state = state
        self.batches: AckQueue[tuple[Any, int]] = AckQueue()
        self.read_complete = False

    def settle(self) -> None:
        """Move the resume point past every leading batch that Kafka fully acknowledged."""
        for last_id, count in self.batches.settle():
            self.state.resume_after = [last_id]
            self.state.copied += count
        if self.read_complete and not self.batches:
            self.state.done = True


# Sizes of the fixed-width BSON types an _id usually has: double, ObjectId, int32, int64.
_FIXED_ID_SIZES = {0x01: 8, 0x07: 12, 0x10: 4, 0x12: 8}


def document_id(document: RawBSONDocument) -> Any:
    """The `_id` of a stored document. mongod stores `_id` first, so common types are read straight from the
    leading bytes; anything else falls back to decoding the document's top level."""
    raw = document.raw
    kind = raw[4]
    if raw[5:9] == b"_id\x00":
        size = _FIXED_ID_SIZES.get(kind)
        if kind == 0x02:
            size = 4 + int.from_bytes(raw[9:13], "little")
        if size is not None:
            element = raw[4:9 + size]
            return bson.decode((len(element) + 5).to_bytes(4, "little") + element + b"\x00")["_id"]
    return document["_id"]


def _put(out: "queue.Queue[tuple[_RangeProgress, Any]]", item: tuple[_RangeProgress, Any],
         stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def _read_range(client: MongoClient, progress: _RangeProgress, batch_size: int,
                out: "queue.Queue[tuple[_RangeProgress, Any]]", stop: threading.Event) -> None:
    """Read one range in `_id` order into `out`, retrying transient errors from the last `_id` handed over."""
    collection, state = progress.collection, progress.state
    source = client.get_database(collection.db).get_collection(collection.name, codec_options=RAW)
    after = state.resume_after
    backoff = Backoff()
    while not stop.is_set():
        try:
            cursor = (source.find({}, batch_size=batch_size).hint([("_id", 1)])
                      .min([("_id", after[0] if after else state.lower)]).max([("_id", state.upper)]))
            resume_key = key_text(after[0]) if after else None  # `min` is inclusive: pass over that document
            batch: list[RawBSONDocument] = []
            for document in cursor:
                if resume_key is not None:
                    is_resume_point, resume_key = key_text(document_id(document)) == resume_key, None
                    if is_resume_point:
                        continue
                batch.append(document)
                if len(batch) >= batch_size:
                    if not _put(out, (progress, batch), stop):
                        return
                    after, batch = [document_id(batch[-1])], []
            if batch and not _put(out, (progress, batch), stop):
                return
            _put(out, (progress, _END), stop)
            return
        except Exception as exc:  # noqa: BLE001 - handed to the main thread unless transient
            if not is_transient(exc):
                _put(out, (progress, exc), stop)
                return
            delay = backoff.next_delay()
            log.warning("source unavailable during the copy, retrying",
                        extra={"ns": collection.ns, "error": str(exc), "retry_in_s": round(delay, 2)})
            stop.wait(delay)


class SnapshotCopier:
    def __init__(self, client: MongoClient, publisher: Publisher, store: SnapshotStore, state: SnapshotState,
                 settings: SnapshotSettings, metrics: ProducerMetrics, shutdown: ShutdownFlag,
                 save_interval_s: float, call: Callable[[Callable[[], Any], str], Any],
                 heartbeat: Callable[[], None]) -> None:
        self._client = client
        self._publisher = publisher
        self._store = store
        self.state = state
        self._settings = settings
        self._metrics = metrics
        self._shutdown = shutdown
        self._save_interval_s = save_interval_s
        self._call = call
        self._heartbeat = heartbeat
        self._pending_announcements = 0
        self._indexes_in_flight: set[str] = set()
        self._reported: set[str] = set()
        self._last_log = time.monotonic()
        self._last_log_copied = state.copied

    # ---------------------------------------------------------------------------------------- events

    def _operation(self, op: str, ns: str, value: bytes, document_id: Any = None) -> Operation:
        return Operation(self.state.capture, op, ns, document_id, value, None, None, True)

    def _wall(self) -> _dt.datetime:
        return _dt.datetime.now(tz=_dt.timezone.utc)

    def _announce(self, collection: CollectionState) -> None:
        """`create` (with the collection's options) and, with --index-creation before, its indexes."""
        command = {"create": collection.name, **collection.options}
        self._pending_announcements += 1

        def announced() -> None:
            self._pending_announcements -= 1
            collection.announced = True

        value = snapshot_events.command_event(self.state.capture, collection.db, command, self._wall())
        self._publisher.publish(self._operation("c", f"{collection.db}.$cmd", value), announced)
        if self._settings.index_creation is IndexCreation.BEFORE:
            self._publish_indexes(collection)

    def _publish_indexes(self, collection: CollectionState) -> None:
        if not collection.indexes or self._settings.index_creation is IndexCreation.NONE or collection.kind == "view":
            collection.indexes_published = True
            return
        self._indexes_in_flight.add(collection.ns)

        def published() -> None:
            self._indexes_in_flight.discard(collection.ns)
            collection.indexes_published = True

        command = {"createIndexes": collection.name, "indexes": collection.indexes}
        value = snapshot_events.command_event(self.state.capture, collection.db, command, self._wall())
        self._publisher.publish(self._operation("c", f"{collection.db}.$cmd", value), published)

    def _publish_documents(self, progress: _RangeProgress, documents: list[RawBSONDocument]) -> None:
        batch = progress.batches.add((document_id(documents[-1]), len(documents)), len(documents))
        ns = progress.collection.ns
        capture, wall = self.state.capture, self._wall()
        copied = self._metrics.snapshot_copied.labels(ns)

        def acknowledged() -> None:
            batch.acknowledge()
            copied.inc()

        for document in documents:
            value = snapshot_events.document_event(capture, ns, document, wall)
            self._publisher.publish(self._operation("i", ns, value, document_id(document)), acknowledged)

    # ---------------------------------------------------------------------------------------- copy

    def run(self) -> None:
        """Copy everything not yet copied; returns once Kafka acknowledged all of it, or on shutdown."""
        state = self.state
        for collection in state.collections:
            self._metrics.snapshot_estimated.labels(collection.ns).set(collection.estimated)
            self._metrics.snapshot_copied.labels(collection.ns).set(collection.copied)
            if not collection.announced:
                self._announce(collection)
            elif not collection.indexes_published and self._settings.index_creation is IndexCreation.BEFORE:
                self._publish_indexes(collection)
        work = [_RangeProgress(c, r) for c in state.collections for r in c.ranges if not r.done]
        log.info("copying", extra={"collections": len(state.collections), "ranges_left": len(work),
                                   "documents_estimated": state.estimated, "already_copied": state.copied,
                                   "readers": self._settings.parallel})
        out: queue.Queue[tuple[_RangeProgress, Any]] = queue.Queue(
            maxsize=self._settings.parallel * QUEUE_BATCHES_PER_READER)
        stop = threading.Event()
        todo = deque(work)
        readers: dict[int, threading.Thread] = {}
        last_save = time.monotonic()
        try:
            while not self._shutdown.requested:
                self._heartbeat()
                while todo and len(readers) < self._settings.parallel:
                    progress = todo.popleft()
                    thread = threading.Thread(
                        target=_read_range, name=f"snapshot-{progress.collection.ns}", daemon=True,
                        args=(self._client, progress, self._settings.batch_size, out, stop))
                    thread.start()
                    readers[id(progress)] = thread
                try:
                    progress, item = out.get(timeout=0.1)
                except queue.Empty:
                    item = None
                if item is not None:
                    if isinstance(item, Exception):
                        raise FatalError(f"reading {progress.collection.ns} for the copy failed: {item}") from item
                    if item is _END:
                        progress.read_complete = True
                        readers.pop(id(progress)).join()
                    else:
                        self._publish_documents(progress, item)
                self._publisher.send_due_batches()
                self._publisher.poll(0)
                if self._publisher.delivery_error is not None:
                    raise FatalError(f"Kafka did not acknowledge a snapshot message: {self._publisher.delivery_error}. "
                                     "The copy's progress stays before it; restart to resume the copy")
                self._settle(work)
                if time.monotonic() - last_save >= self._save_interval_s:
                    self._save()
                    last_save = time.monotonic()
                self._log_progress()
                if self._finished(todo, readers):
                    return
        finally:
            stop.set()
            self._publisher.flush(60.0)
            self._settle(work)
            self._save()

    def _settle(self, work: list[_RangeProgress]) -> None:
        for progress in work:
            if not progress.state.done:
                progress.settle()
        for collection in self.state.collections:
            if collection.ns in self._reported or not collection.documents_done or not collection.announced:
                continue
            if not collection.indexes_published and self._settings.index_creation is IndexCreation.AFTER:
                if collection.ns not in self._indexes_in_flight:
                    self._publish_indexes(collection)
                continue
            self._reported.add(collection.ns)
            log.info("collection copied", extra={"ns": collection.ns, "documents": collection.copied})

    def _finished(self, todo: deque[_RangeProgress], readers: dict[int, threading.Thread]) -> bool:
        if todo or readers or self._pending_announcements or self._indexes_in_flight:
            return False
        return all(c.documents_done and (c.indexes_published or self._settings.index_creation is IndexCreation.NONE)
                   for c in self.state.collections)

    def _save(self) -> None:
        self._call(lambda: self._store.save(self.state), "saving the copy's progress")

    def _log_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_log < PROGRESS_LOG_S:
            return
        state = self.state
        copied = state.copied
        rate = (copied - self._last_log_copied) / (now - self._last_log)
        self._last_log, self._last_log_copied = now, copied
        estimated = max(state.estimated, copied)
        log.info("copy progress", extra={
            "copied": copied, "estimated": estimated,
            "percent": round(100.0 * copied / estimated, 1) if estimated else 100.0,
            "per_second": round(rate), "eta_s": round((estimated - copied) / rate) if rate > 0 else None,
            "collections_done": sum(1 for c in state.collections if c.documents_done),
            "collections": len(state.collections),
        })

    def complete(self, until: Timestamp) -> None:
        """Tell every partition the copy wrote to that it is complete, then record it."""
        done = threading.Event()
        value = snapshot_events.completion_event(self.state.capture, until, self._wall())
        topic_names = sorted({self._publisher.topic_for(c.ns) for c in self.state.collections})
        self._publisher.broadcast(self._operation("n", "", value), topic_names, done.set)
        self._publisher.flush(60.0)
        if not done.is_set():
            raise FatalError("Kafka did not acknowledge the copy's completion marker within 60 s; restart to resend it")
        self.state.status = COMPLETE
        self._save()
        elapsed = (_dt.datetime.now(tz=_dt.timezone.utc) - self.state.started_at).total_seconds()
        log.info("copy complete", extra={"documents": self.state.copied, "collections": len(self.state.collections),
                                         "seconds": round(elapsed, 1), "capture": position.describe(self.state.capture),
                                         "until": position.describe(until)})
