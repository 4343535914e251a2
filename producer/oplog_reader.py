"""Reading `local.oplog.rs`: its bounds, and a tailable await cursor that yields raw entries."""
from __future__ import annotations

from collections.abc import Iterator

from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import ASCENDING, DESCENDING, CursorType, MongoClient
from pymongo.errors import OperationFailure

from kafkashake.oplog import position
from kafkashake.runtime.errors import PositionLostError

IDLE = None
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

    def tail(self, after: Timestamp) -> Iterator[RawBSONDocument | None]:
        """Entries with `ts > after`, in order, until the cursor dies. Yields `IDLE` whenever it has caught up.

        One tailable await cursor reads the backlog and then waits for new entries; a getMore returns as soon as
        it has any, up to OPLOG_BATCH entries or 16 MiB."""
        cursor = self._oplog.find(
            {"ts": {"$gt": after}},
            cursor_type=CursorType.TAILABLE_AWAIT,
            batch_size=OPLOG_BATCH,
            oplog_replay=True,
        ).max_await_time_ms(self._await_ms)
        try:
            while cursor.alive:
                try:
                    yield cursor.next()
                except StopIteration:
                    yield IDLE
        except OperationFailure as exc:
            self._raise_if_rolled_over(exc, after)
            raise
        finally:
            cursor.close()

    @staticmethod
    def _raise_if_rolled_over(exc: OperationFailure, after: Timestamp) -> None:
        if exc.code == CAPPED_POSITION_LOST:
            raise PositionLostError(
                f"the oplog rolled over past the read position {position.describe(after)} while reading: "
                "resynchronise the destination and enlarge the oplog"
            ) from exc
