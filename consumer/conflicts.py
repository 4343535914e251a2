"""Conflicts: writes the destination refuses because its state differs from what the event expects.
A conflict never stops replay: it is counted by kind and logged (rate-limited), and the destination
is left as it is."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from consumer.decoder import Event

log = logging.getLogger("kafkashake.consumer.conflicts")

DUPLICATE_KEY = "duplicate_key"
UPDATE_MISSING = "update_missing"


@dataclass(frozen=True)
class Conflict:
    kind: str
    event: Event
    code: int | None
    message: str
    index_name: str | None = None


class RateLimitedLog:
    """At most `per_window` lines every `window_s` seconds, then one line saying how many were suppressed."""

    def __init__(self, per_window: int = 20, window_s: float = 10.0) -> None:
        self._per_window = per_window
        self._window_s = window_s
        self._window_start = time.monotonic()
        self._count = 0
        self._suppressed = 0

    def warning(self, message: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._window_start >= self._window_s:
            if self._suppressed:
                log.warning("conflict log lines suppressed", extra={"suppressed": self._suppressed})
            self._window_start, self._count, self._suppressed = now, 0, 0
        if self._count < self._per_window:
            self._count += 1
            log.warning(message, extra=fields)
        else:
            self._suppressed += 1


def describe(conflict: Conflict) -> dict[str, Any]:
    event = conflict.event
    return {
        "kind": conflict.kind,
        "ns": event.ns,
        "op": event.op,
        "code": conflict.code,
        "error": conflict.message,
        "index": conflict.index_name,
        "kafka": f"{event.topic}/{event.partition}@{event.offset}",
    }
