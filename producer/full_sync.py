"""`--sync-mode all|full`: decide whether a copy runs, capture the stream position before it, plan it, and check
afterwards that streaming can still start from the captured position.

- No checkpoint yet: capture the current position and checkpoint it, plan the copy and save the plan, copy.
- A copy in progress (its state says `copying`): resume it; the captured position is already checkpointed.
- `all` with a checkpoint and no copy in progress: stream on from the checkpoint; no second copy.
- `full` with no copy in progress: a new copy, with a new captured position."""
from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable
from typing import Any

from bson.timestamp import Timestamp
from pymongo import MongoClient

from kafkashake.oplog import position
from kafkashake.oplog.namespaces import NamespaceFilter
from kafkashake.producer.checkpoint import Checkpoint, CheckpointStore
from kafkashake.producer.metrics import ProducerMetrics
from kafkashake.producer.publisher import Publisher
from kafkashake.producer.settings import SnapshotSettings, SyncMode
from kafkashake.producer.snapshot import SnapshotCopier
from kafkashake.producer.snapshot_plan import list_collections, split
from kafkashake.producer.snapshot_state import COPYING, SnapshotState, SnapshotStore
from kafkashake.runtime.errors import PositionLostError
from kafkashake.runtime.shutdown import ShutdownFlag

log = logging.getLogger("kafkashake.producer.snapshot")
SIZING_MARGIN = 2.0

Call = Callable[[Callable[[], Any], str], Any]


class FullSync:
    def __init__(self, mode: SyncMode, settings: SnapshotSettings, client: MongoClient, checkpoints: CheckpointStore,
                 store: SnapshotStore, namespaces: NamespaceFilter, private_databases: frozenset[str],
                 metrics: ProducerMetrics, shutdown: ShutdownFlag, call: Call) -> None:
        self.mode = mode
        self._settings = settings
        self._client = client
        self._checkpoints = checkpoints
        self._store = store
        self._namespaces = namespaces
        self._private = private_databases
        self._metrics = metrics
        self._shutdown = shutdown
        self._call = call
        self.state: SnapshotState | None = None
        self.copier: SnapshotCopier | None = None

    @property
    def copy_pending(self) -> bool:
        return self.state is not None and self.state.status == COPYING

    def prepare(self, capture: Callable[[], Checkpoint]) -> Checkpoint:
        """The stream checkpoint to start from; plans (or reloads) the copy if one is to run."""
        saved_copy = self._call(self._store.load, "loading the copy's state")
        saved = self._call(self._checkpoints.load, "loading the checkpoint")
        if saved_copy is not None and saved_copy.status == COPYING and saved is not None:
            self.state = saved_copy
            log.info("resuming the copy", extra={"capture": position.describe(saved_copy.capture),
                                                 "already_copied": saved_copy.copied,
                                                 "estimated": saved_copy.estimated})
            return saved
        if saved is not None and self.mode is SyncMode.ALL:
            log.info("checkpoint exists, so no copy: streaming from it (a copy runs on a task's first start; to copy "
                     "again, use a new --name or --sync-mode full)", extra={"position": position.describe(saved.ts)})
            return saved
        first = self._call(capture, "capturing the stream position before the copy")
        self._call(lambda: self._checkpoints.save(first), "saving the captured position")
        collections = self._call(lambda: list_collections(self._client, self._namespaces, self._private),
                                 "listing collections")
        for collection in collections:
            self._call(lambda: split(self._client, collection, self._settings.split_documents), "planning the copy")
        self.state = SnapshotState(first.ts, _dt.datetime.now(tz=_dt.timezone.utc), collections,
                                   index_creation=self._settings.index_creation)
        self._call(lambda: self._store.save(self.state), "saving the copy's plan")  # type: ignore[arg-type]
        log.info("copy planned; streaming will start from the position captured before it",
                 extra={"capture": position.describe(first.ts), "collections": len(collections),
                        "ranges": sum(len(c.ranges) for c in collections),
                        "estimated": sum(c.estimated for c in collections)})
        return first

    def copy(self, publisher: Publisher, window: Callable[[], tuple[Timestamp | None, Timestamp | None]],
             heartbeat: Callable[[], None], save_interval_s: float) -> bool:
        """Run the copy to its end; False if a shutdown interrupted it. Checks the captured position still
        is in the oplog before the copy (when resuming) and after it."""
        state = self.state
        assert state is not None, "prepare() first"
        self.check_window(window)
        self.copier = SnapshotCopier(self._client, publisher, self._store, state, self._settings, self._metrics,
                                     self._shutdown, save_interval_s, self._call, heartbeat)
        self.copier.run()
        if self._shutdown.requested:
            return False
        until = self.check_window(window)
        self.copier.complete(until)
        return True

    def check_window(self, window: Callable[[], tuple[Timestamp | None, Timestamp | None]]) -> Timestamp:
        """The newest source position, after checking the captured one is still inside the oplog."""
        state = self.state
        assert state is not None
        oldest, newest = self._call(window, "reading the oplog window")
        if oldest is not None and oldest > position.successor(state.capture):
            raise PositionLostError(self._too_small_message(oldest, newest))
        return newest or Timestamp(int(_dt.datetime.now(tz=_dt.timezone.utc).timestamp()), 0)

    def _too_small_message(self, oldest: Timestamp, newest: Timestamp | None) -> str:
        state = self.state
        assert state is not None
        copy_s = (_dt.datetime.now(tz=_dt.timezone.utc) - state.started_at).total_seconds()
        window_s = (newest.time - oldest.time) if newest else 0
        advice = self._sizing_advice(copy_s, window_s)
        return (
            f"oplog too small for a copy this long: the copy started at {position.describe(state.capture)} and has "
            f"run {copy_s:.0f} s, but the oplog now only reaches back to {position.describe(oldest)} (a window of "
            f"{window_s} s), so the changes made during the copy cannot all be streamed. {advice} Then copy again: "
            "delete this task's documents in the checkpoint database's `checkpoint` and `snapshot` collections, or "
            "use a new --name."
        )

    def _sizing_advice(self, copy_s: float, window_s: float) -> str:
        hours = max(1, round(copy_s * SIZING_MARGIN / 3600 + 0.5))
        advice = (f"Make the oplog keep at least twice the copy time: storage.oplogMinRetentionHours={hours} "
                  "(MongoDB 4.4+)")
        try:
            stats = self._client.local.command("collStats", "oplog.rs")
            current_mb = int(stats.get("maxSize", 0)) // (1024 * 1024)
        except Exception:  # noqa: BLE001 - advice only; permissions on local may be missing
            current_mb = 0
        if current_mb and window_s > 0:
            needed_mb = int(current_mb * copy_s * SIZING_MARGIN / window_s) + 1
            advice += (f", or grow it from {current_mb} MB to about {needed_mb} MB with "
                       f"db.adminCommand({{replSetResizeOplog: 1, size: {needed_mb}}})")
        return advice + "."

    def status(self) -> dict[str, Any] | None:
        state = self.state
        if state is None:
            return None
        return {
            "status": state.status, "capture": position.describe(state.capture),
            "copied": state.copied, "estimated": state.estimated,
            "collections": {c.ns: {"copied": c.copied, "estimated": c.estimated,
                                   "done": c.documents_done and c.indexes_published}
                            for c in state.collections},
        }
