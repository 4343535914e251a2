"""Reading `local.oplog.rs`: its bounds, and a tailable await cursor that yields raw entries."""
from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import ASCENDING, DESCENDING, CursorType, MongoClient
from pymongo.errors import OperationFailure

from kafkashake.oplog import position
from kafkashake.runtime.errors import PositionLostError

IDLE = None
# Raw batches fetched ahead of the one being handled (each at most 16 MiB).
PREFETCH_BATCHES = 2


# The tailable cursor died (the server closed it): the caller opens a new one from where it was.
_ENDED = object()
# How long a closing reader may take to notice: its await is max_await_time_ms; a getMore stuck on a dead
# connection is left to die with its daemon thread.
READER_CLOSE_S = 10.0


def split_documents(batch: bytes) -> Iterator[bytes]:
    """The BSON documents of a raw batch, each as its own bytes."""
    view, at, end = memoryview(batch), 0, len(batch)
    while at < end:
        size = int.from_bytes(view[at:at + 4], "little")
        yield bytes(view[at:at + size])
        at += size
CAPPED_POSITION_LOST = 136
OPLOG_BATCH = 10_000


class OplogReader:
    def __init__(self, client: MongoClient, await_ms: int = 200) -> None:
        raw = CodecOptions(document_class=RawBSONDocument)
        self._oplog = client.get_database("local", codec_options=raw).get_collection("oplog.rs")
        self._await_ms = await_ms

    def _edge(self, direction: int) -> Timestamp | None:
        entry = self._oplog.find_one({}, projection={"ts": 1}, sort=[("$natural", direction)])
        return None if entry is None else entry["ts"]

    def oldest(self) -> Timestamp | None:
        return self._edge(ASCENDING)

    def newest(self) -> Timestamp | None:
        return self._edge(DESCENDING)

    def window(self) -> tuple[Timestamp | None, Timestamp | None]:
        """The oldest and newest positions the oplog holds."""
        return self.oldest(), self.newest()

    def check_within_window(self, after: Timestamp) -> None:
        """Raise `PositionLostError` if entries right after `after` may already have been truncated."""
        oldest = self.oldest()
        if oldest is None or oldest <= position.successor(after):
            return
        raise PositionLostError(
            f"the checkpoint {position.describe(after)} is older than the oldest oplog entry "
            f"{position.describe(oldest)}: changes in between were truncated from the oplog and cannot be read. "
            "To recover: resynchronise the destination (full copy), then delete this task's checkpoint document "
            "or start with a new --name and --start-position; to keep this from recurring, enlarge the oplog "
            "(replSetResizeOplog) so it covers the longest producer outage."
        )

    def tail(self, after: Timestamp) -> Iterator[list[bytes] | None]:
        """Entries with `ts > after` as BSON bytes, in order, one server batch at a time, until the cursor dies.
        Yields `IDLE` whenever it has caught up.

        One tailable await cursor reads the backlog and then waits for new entries; a getMore returns as soon as
        it has any, up to OPLOG_BATCH entries or 16 MiB. A reader thread fetches the next batch while this one is
        handled, so the server works while we encode."""
        batches: queue.Queue[Any] = queue.Queue(maxsize=PREFETCH_BATCHES)
        stop = threading.Event()
        reader = threading.Thread(target=self._fetch, args=(after, batches, stop), name="kafkashake-oplog-reader",
                                  daemon=True)
        reader.start()
        try:
            while True:
                batch = batches.get()
                if batch is _ENDED:
                    return
                if isinstance(batch, BaseException):
                    raise batch
                if batch is IDLE:
                    yield IDLE
                    continue
                yield list(split_documents(batch))
        finally:
            stop.set()
            deadline = time.monotonic() + READER_CLOSE_S
            while reader.is_alive() and time.monotonic() < deadline:  # unblock a reader waiting for room
                with contextlib.suppress(queue.Empty):
                    batches.get(timeout=0.1)

    def _fetch(self, after: Timestamp, batches: queue.Queue, stop: threading.Event) -> None:
        cursor = self._oplog.find_raw_batches(
            {"ts": {"$gt": after}},
            cursor_type=CursorType.TAILABLE_AWAIT,
            batch_size=OPLOG_BATCH,
            oplog_replay=True,
        ).max_await_time_ms(self._await_ms)
        try:
            while cursor.alive and not stop.is_set():
                try:
                    batch = cursor.next()
                except StopIteration:
                    batch = IDLE
                batches.put(batch if batch else IDLE)
            batches.put(_ENDED)
        except OperationFailure as exc:
            try:
                self._raise_if_rolled_over(exc, after)
                batches.put(exc)
            except PositionLostError as lost:
                batches.put(lost)
        except BaseException as exc:  # noqa: BLE001  handed to the reading thread, which raises it
            batches.put(exc)
        finally:
            cursor.close()

    @staticmethod
    def _raise_if_rolled_over(exc: OperationFailure, after: Timestamp) -> None:
        if exc.code == CAPPED_POSITION_LOST:
            raise PositionLostError(
                f"the oplog rolled over past the read position {position.describe(after)} while reading: "
                "resynchronise the destination and enlarge the oplog"
            ) from exc
