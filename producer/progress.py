"""How far Kafka is behind the source, as the producer knows it: the lag it reports and the heartbeats it sends.

The producer is in sync when it has read everything the source logged and Kafka acknowledged all of it. Its lag is
how long ago it last was, or, when the acknowledged position is newer, how old that position is: zero while in
sync, growing by a second a second when it cannot read or publish for any reason."""
from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable

from bson.timestamp import Timestamp

from kafkashake.schemas.heartbeats import Heartbeat


class SyncProgress:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.in_sync_at: float | None = None
        self.in_sync = False
        self.watermark: Timestamp | None = None

    def observe(self, watermark: Timestamp, in_sync: bool) -> None:
        """After each turn of the main loop: the position everything at or before which is acknowledged, and
        whether everything read is acknowledged and the source read to its end."""
        self.watermark = watermark
        self.in_sync = in_sync
        if in_sync:
            self.in_sync_at = self._clock()

    def lag_seconds(self) -> float:
        if self.watermark is None or self.in_sync:
            return 0.0
        now = self._clock()
        newest = max(self.watermark.time, self.in_sync_at or 0.0)
        return round(max(0.0, now - newest), 3)

    def heartbeat(self, interval_s: float) -> Heartbeat | None:
        if self.watermark is None:
            return None
        in_sync = self.in_sync_at if self.in_sync_at is not None else float(self.watermark.time)
        return Heartbeat(self.watermark, _dt.datetime.fromtimestamp(in_sync, tz=_dt.timezone.utc), self.lag_seconds(),
                         interval_s)
