"""`--ha`: several producer instances of one task; one leads, the others stand by (MongoShake's `master_quorum`).

The leader holds a lease, a document `<task>` in `<checkpoint db>.lease`: holder, epoch and expiry. It renews the
lease every third of its length; a standby takes it over once it expired, with the epoch raised by one. Checkpoint
writes carry the writer's epoch and only apply while no higher epoch has written (see CheckpointStore), so a
leader that was paused past its lease can never move the checkpoint after its successor started. A leader that
finds the lease gone stops at once."""
from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
import threading
import uuid
from typing import Any

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, PyMongoError

from kafkashake.runtime.shutdown import ShutdownFlag

log = logging.getLogger("kafkashake.producer.ha")


def _now() -> _dt.datetime:
    return _dt.datetime.now(tz=_dt.timezone.utc)


class Lease:
    def __init__(self, collection: Collection, task: str, lease_s: float) -> None:
        self._collection = collection
        self._task = task
        self.lease_s = lease_s
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.epoch = 0
        self.lost = threading.Event()
        self._stop = threading.Event()

    def _try_acquire(self) -> bool:
        now = _now()
        expires = now + _dt.timedelta(seconds=self.lease_s)
        try:
            document: Any = self._collection.find_one_and_update(
                {"_id": self._task, "$or": [{"expires_at": {"$lt": now}}, {"holder": self.instance}]},
                {"$set": {"holder": self.instance, "expires_at": expires, "acquired_at": now}, "$inc": {"epoch": 1}},
                upsert=True, return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:  # the document exists and someone else holds an unexpired lease
            return False
        self.epoch = int(document["epoch"])
        return True

    def wait_for_leadership(self, shutdown: ShutdownFlag, poll_s: float = 1.0) -> bool:
        """Block until this instance leads (True) or shutdown was requested (False)."""
        announced = False
        while not shutdown.requested:
            if self._try_acquire():
                log.info("leading: this instance publishes now", extra={"instance": self.instance,
                                                                       "epoch": self.epoch})
                threading.Thread(target=self._renew_loop, name="ha-lease", daemon=True).start()
                return True
            if not announced:
                current = self._collection.find_one({"_id": self._task}) or {}
                log.info("standing by: another instance leads this task",
                         extra={"instance": self.instance, "leader": current.get("holder"),
                                "lease_s": self.lease_s})
                announced = True
            shutdown.wait(poll_s)
        return False

    def _renew_loop(self) -> None:
        renewed_at = _now()
        while not self._stop.wait(self.lease_s / 3):
            if _now() - renewed_at > _dt.timedelta(seconds=self.lease_s):
                log.error("could not renew the lease before it ran out: stopping, a standby may lead now",
                          extra={"instance": self.instance, "epoch": self.epoch})
                self.lost.set()
                return
            try:
                renewed = self._collection.update_one(
                    {"_id": self._task, "holder": self.instance, "epoch": self.epoch},
                    {"$set": {"expires_at": _now() + _dt.timedelta(seconds=self.lease_s)}},
                )
            except PyMongoError as exc:  # keep trying until the lease would have run out
                log.warning("cannot renew the lease, retrying", extra={"error": str(exc)})
                continue
            renewed_at = _now()
            if renewed.matched_count == 0:
                log.error("lost the lease: another instance took over this task", extra={"instance": self.instance,
                                                                                         "epoch": self.epoch})
                self.lost.set()
                return

    def release(self) -> None:
        """Give the lease up at shutdown so a standby takes over without waiting for it to expire."""
        self._stop.set()
        if self.lost.is_set():
            return
        try:
            self._collection.update_one({"_id": self._task, "holder": self.instance, "epoch": self.epoch},
                                        {"$set": {"expires_at": _now() - _dt.timedelta(seconds=1)}})
        except PyMongoError:
            pass
