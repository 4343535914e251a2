"""The change_stream fetch method: watch a deployment, database or collection; checkpoint resume tokens.

The resume token checkpointed is that of the newest event such that it and every event before it were
acknowledged by Kafka; a restart resumes with `startAfter` it, so nothing is skipped or repeated, and an
`invalidate` does not end the stream. On a quiet stream the post-batch resume token moves the checkpoint on.
Events over 16 MB arrive in fragments through `$changeStreamSplitLargeEvent` and are reassembled here."""
from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from kafkashake.oplog import position
from kafkashake.oplog.entry import SYSTEM_DATABASES, Operation, raw_bytes, transaction_id
from kafkashake.oplog.namespaces import NamespaceFilter
from kafkashake.producer.acknowledgements import AckQueue, Slot
from kafkashake.producer.checkpoint import Checkpoint
from kafkashake.producer.oplog_reader import OplogReader
from kafkashake.producer.settings import BeforeChange, FullDocument, OnHistoryLost, WatchSettings
from kafkashake.producer.metrics import ProducerMetrics
from kafkashake.runtime.errors import ConfigurationError, FatalError, PositionLostError

log = logging.getLogger("kafkashake.producer.change_stream")
FETCH_METHOD = "change_stream"
HISTORY_LOST_CODES = frozenset({260, 280, 286})  # InvalidResumeToken, ChangeStreamFatalError, ChangeStreamHistoryLost
UNSUPPORTED_STAGE_CODES = frozenset({40324, 20, 9})
BSON_TOO_LARGE = 10334
SPLIT_STAGE = {"$changeStreamSplitLargeEvent": {}}
GAP_EVENT = "kafkashake.gap"
RAW = CodecOptions(document_class=RawBSONDocument)


Pending = list[tuple[Operation, Slot[tuple[Timestamp, Any]]]]


def namespace_filter(private_databases: frozenset[str]) -> dict[str, Any]:
    """Server-side `$match`: never transfer events of internal or private databases or `system.*` collections."""
    return {"$match": {"ns.db": {"$nin": sorted(SYSTEM_DATABASES | private_databases)},
                       "ns.coll": {"$not": {"$regex": r"^system\."}}}}


def _event_namespace(event: Mapping[str, Any]) -> str:
    ns = event.get("ns") or {}
    db, coll = ns.get("db", ""), ns.get("coll")
    return f"{db}.{coll}" if coll else db


def to_operation(event: Mapping[str, Any], value: bytes) -> Operation:
    key = event.get("documentKey")
    document_key = None if key is None else bson.decode(bson.encode(key))
    return Operation(event["clusterTime"], event["operationType"], _event_namespace(event), document_key, value,
                     event.get("wallTime"), transaction_id(event))


class ChangeStreamSource:
    def __init__(self, client: MongoClient, watch: WatchSettings, private_databases: frozenset[str],
                 metrics: ProducerMetrics, namespaces: NamespaceFilter = NamespaceFilter()) -> None:
        self._client = client
        self._oplog = OplogReader(client)
        self._watch = watch
        user_filter = namespaces.server_match()
        self._pipeline = [namespace_filter(private_databases)] + ([user_filter] if user_filter else [])
        self._metrics = metrics
        self._split_supported: bool | None = None
        self._pending: AckQueue[tuple[Timestamp, Any]] = AckQueue()
        self._safe: Checkpoint | None = None
        self._read_token: Any = None
        self._read_ts: Timestamp | None = None
        self._start_at: Timestamp | None = None
        self._idle_token: Any = None
        self._gap: Operation | None = None

    # ------------------------------------------------------------------------------------------ positions

    @property
    def scope(self) -> str:
        """What the stream watches: `*` (deployment), `<db>` or `<db>.<coll>`. Resume tokens only fit their scope."""
        watch = self._watch
        return f"{watch.watch_db}.{watch.watch_coll}" if watch.watch_coll else watch.watch_db or "*"

    def _checkpoint(self, ts: Timestamp, token: Any) -> Checkpoint:
        return Checkpoint(ts, token, FETCH_METHOD, self.scope)

    def first_checkpoint(self, start_position: str) -> Checkpoint:
        """With no checkpoint: `latest` takes the stream's current position; the others map to startAtOperationTime."""
        if start_position == "latest":
            with self._open(None, None) as stream:
                token = stream.resume_token
            return self._checkpoint(self._cluster_time(), token)
        if start_position == "earliest":
            oldest = self._oplog.oldest()
            if oldest is None:
                raise FatalError("--start-position earliest needs to read local.oplog.rs; give a time instead")
            return self._checkpoint(oldest, None)
        parsed = position.parse(start_position)
        return self._checkpoint(position.successor(parsed) if "," in start_position else parsed, None)

    def _cluster_time(self) -> Timestamp:
        reply = self._client.admin.command("ping")
        cluster_time = reply.get("$clusterTime", {}).get("clusterTime") or reply.get("operationTime")
        return cluster_time or Timestamp(int(_dt.datetime.now(tz=_dt.timezone.utc).timestamp()), 0)

    def start(self, saved: Checkpoint) -> None:
        if saved.resume_token is not None and saved.fetch_method == FETCH_METHOD and saved.scope != self.scope:
            raise ConfigurationError(
                f"this task's checkpoint holds a resume token for watch scope {saved.scope!r}, but the producer now "
                f"watches {self.scope!r}; tokens only resume their own scope. Use another --name for this scope, "
                "or restore the previous --watch-db/--watch-coll"
            )
        self._safe = saved
        if saved.resume_token is not None and saved.fetch_method == FETCH_METHOD:
            self._read_token = saved.resume_token
        else:
            # No token yet (first start at a time) or an oplog checkpoint: start at the first position after it.
            self._start_at = saved.ts if saved.fetch_method == FETCH_METHOD else position.successor(saved.ts)
        self._read_ts = saved.ts

    # ------------------------------------------------------------------------------------------- streaming

    def _open(self, token: Any, start_at: Timestamp | None):  # type: ignore[no-untyped-def]
        watch = self._watch
        options: dict[str, Any] = {"full_document": None if watch.full_document is FullDocument.DEFAULT
                                   else watch.full_document.value,
                                   "batch_size": 1000, "max_await_time_ms": 200}
        if watch.full_document_before_change is not BeforeChange.OFF:
            options["full_document_before_change"] = watch.full_document_before_change.value
        if watch.show_expanded_events:
            options["show_expanded_events"] = True
        if token is not None:
            options["start_after"] = token
        elif start_at is not None:
            options["start_at_operation_time"] = start_at
        if watch.watch_coll:
            target: Any = self._client.get_database(watch.watch_db, codec_options=RAW)[watch.watch_coll]
        elif watch.watch_db:
            target = self._client.get_database(watch.watch_db, codec_options=RAW)
        else:
            target = self._client
        if self._split_supported is not False:
            try:
                stream = target.watch(self._pipeline + [SPLIT_STAGE], **options)
                self._split_supported = True
                return stream
            except OperationFailure as exc:
                if exc.code not in UNSUPPORTED_STAGE_CODES:
                    raise
                self._split_supported = False
                log.info("server cannot split large change events; events over 16 MB will stop the producer")
        return target.watch(self._pipeline, **options)

    def changes(self) -> Iterator[Pending | None]:
        if self._gap is not None:
            gap, self._gap = self._gap, None
            yield [(gap, self._slot(self._read_token, gap.ts))]
        try:
            yield from self._read()
        except OperationFailure as exc:
            if exc.code in HISTORY_LOST_CODES:
                self._history_lost(exc)
                return
            if exc.code == BSON_TOO_LARGE or "BSONObjectTooLarge" in str(exc):
                raise FatalError(
                    f"a change event after {position.describe(self._read_ts)} is larger than 16 MB and this server "
                    f"cannot split it with $changeStreamSplitLargeEvent (MongoDB 7.0, 6.0.9): {exc}. Shrink that "
                    "document, or use --fetch-method oplog"
                ) from exc
            raise

    def _read(self) -> Iterator[Pending | None]:
        start_at, self._start_at = self._start_at, None
        fragments: list[RawBSONDocument] = []
        with self._open(self._read_token, start_at if self._read_token is None else None) as stream:
            while stream.alive:
                event = stream.try_next()
                if event is None:
                    if not fragments:
                        self._idle_token = stream.resume_token
                    yield None
                    continue
                split = event.get("splitEvent")
                if split is not None:
                    fragments.append(event)
                    if split["fragment"] < split["of"]:
                        continue
                    merged = {k: v for fragment in fragments for k, v in fragment.items() if k != "splitEvent"}
                    fragments = []
                    value = bson.encode(merged)
                    event = RawBSONDocument(value)
                token = event["_id"]
                self._read_token, self._read_ts = token, event["clusterTime"]
                self._idle_token = None
                self._metrics.events_read.labels(event["operationType"]).inc()
                yield [(to_operation(event, raw_bytes(event)), self._slot(token, event["clusterTime"]))]
                if event["operationType"] == "invalidate":
                    return  # reopened by the caller with startAfter the invalidate token

    def _slot(self, token: Any, ts: Timestamp) -> Slot[tuple[Timestamp, Any]]:
        return self._pending.add((ts, token))

    def _history_lost(self, exc: OperationFailure) -> None:
        lost_after = position.describe(self._read_ts)
        if self._watch.on_history_lost is not OnHistoryLost.RESTART_AT_NOW:
            raise PositionLostError(
                f"the change stream cannot resume after {lost_after}: {exc} (code {exc.code}). The source's history "
                "no longer reaches the checkpoint, so changes were lost. Choices: resynchronise the destination and "
                "start a new task (new --name, or delete the checkpoint document); or restart with "
                "--on-history-lost restart-at-now to accept the gap, which is then logged, counted and published "
                "as a kafkashake.gap event. Enlarge the oplog to keep this from recurring"
            ) from exc
        now = self._cluster_time()
        log.error("change stream history lost: restarting at now, CHANGES IN BETWEEN ARE MISSING",
                  extra={"lost_after": lost_after, "restart_at": position.describe(now), "error": str(exc)})
        self._metrics.history_gaps.inc()
        gap = {"_id": {"kafkashake": "gap", "at": now}, "operationType": GAP_EVENT, "clusterTime": now,
               "wallTime": _dt.datetime.now(tz=_dt.timezone.utc), "ns": {"db": "", "coll": ""},
               "lostAfterToken": self._read_token, "lostAfterTime": self._read_ts, "error": str(exc)}
        self._gap = to_operation(gap, bson.encode(gap))
        self._read_token, self._read_ts, self._start_at = None, now, now

    # ----------------------------------------------------------------------------------------- checkpoints

    def safe_checkpoint(self) -> Checkpoint:
        assert self._safe is not None, "start() first"
        settled = self._pending.settle()
        if settled:
            # A slot without a token is the gap marker: continue from the restart position.
            ts, token = settled[-1]
            self._safe = self._checkpoint(ts, token)
        if not self._pending and self._idle_token is not None:
            self._safe = self._checkpoint(self._safe.ts, self._idle_token)
        return self._safe

    def read_position(self) -> Timestamp:
        """The newest position read so far; on a quiet stream, the server's cluster time."""
        if self._idle_token is not None or self._read_ts is None:
            return self._cluster_time()
        return self._read_ts

    def in_sync(self) -> bool:
        self.safe_checkpoint()
        return not self._pending and self._idle_token is not None

    def window(self) -> tuple[Timestamp | None, Timestamp | None]:
        try:
            return self._oplog.window()
        except OperationFailure:  # mongos or no permission on local: no window to report
            return None, None
