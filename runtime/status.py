"""Pieces of the /status document and the runtime controls both processes share."""
from __future__ import annotations

import enum
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from bson.timestamp import Timestamp
from prometheus_client import CollectorRegistry

from kafkashake.oplog import position
from kafkashake.runtime import secrets
from kafkashake.runtime.settings import Secret, is_secret_property
from kafkashake.runtime.http_api import ControlError

RATE_WINDOW_S = 1.0
STALL_AFTER_S = 60.0


class Liveness:
    """/readyz: ready once the main loop runs, and as long as it keeps turning."""

    def __init__(self, running_word: str) -> None:
        self._running_word = running_word
        self.last_beat: float | None = None

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    @property
    def started(self) -> bool:
        return self.last_beat is not None

    def readiness(self, paused: bool) -> tuple[bool, str]:
        if self.last_beat is None:
            return False, "starting"
        stalled = time.monotonic() - self.last_beat
        if stalled > STALL_AFTER_S:
            return False, f"no progress of the main loop for {stalled:.0f} s"
        return True, "paused" if paused else self._running_word


def describe_position(ts: Timestamp | None) -> dict[str, Any] | None:
    return None if ts is None else {"ts": position.text(ts), "time": position.iso_time(ts)}


def counter_totals(registry: CollectorRegistry, names: Iterable[str]) -> dict[str, float]:
    """Totals of the named counters (summed over labels)."""
    wanted = {f"{name}_total": name for name in names}
    totals = {name: 0.0 for name in wanted.values()}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name in wanted:
                totals[wanted[sample.name]] += sample.value
    return totals


class RateMeter:
    """Per-second rates of counters, measured between samples at least a second apart."""

    def __init__(self) -> None:
        self._previous: tuple[float, Mapping[str, float]] | None = None
        self._rates: dict[str, float] = {}
        self._lock = threading.Lock()

    def rates(self, totals: Mapping[str, float]) -> dict[str, float]:
        now = time.monotonic()
        with self._lock:
            if self._previous is None:
                self._previous = (now, dict(totals))
            elif now - self._previous[0] >= RATE_WINDOW_S:
                then, before = self._previous
                self._rates = {name: round((value - before.get(name, 0.0)) / (now - then), 2)
                               for name, value in totals.items()}
                self._previous = (now, dict(totals))
            return dict(self._rates)


def sanitized(settings: Any) -> Any:
    """The configuration for /status, with secrets masked: `Secret`s, secret librdkafka properties, passwords in
    connection strings."""
    if isinstance(settings, Secret):
        return secrets.MASK
    if is_dataclass(settings):
        return {item.name: sanitized(getattr(settings, item.name)) for item in fields(settings)}
    if isinstance(settings, dict):
        return {name: secrets.MASK if is_secret_property(str(name)) else sanitized(value)
                for name, value in settings.items()}
    if isinstance(settings, enum.Enum):
        return settings.value
    if isinstance(settings, (list, tuple, set, frozenset)):
        return [sanitized(value) for value in settings]
    if isinstance(settings, Timestamp):
        return describe_position(settings)
    if isinstance(settings, str):
        return secrets.redact(settings)
    if settings is None or isinstance(settings, (int, float, bool)):
        return settings
    return secrets.redact(str(settings))


class RuntimeControls:
    """What /control may change while the process runs; the main loop reads it on every turn."""

    def __init__(self, allowed: frozenset[str], target_delay: float | None = None,
                 exit_at: Timestamp | None = None) -> None:
        self._allowed = allowed
        self._lock = threading.Lock()
        self.paused = False
        self.target_delay = target_delay
        self.exit_at = exit_at

    def apply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(body) - self._allowed
        if unknown:
            raise ControlError(f"unknown controls {sorted(unknown)}; accepted: {sorted(self._allowed)}")
        with self._lock:
            if body.get("pause"):
                self.paused = True
            if body.get("resume"):
                self.paused = False
            if "target_delay" in body:
                delay = body["target_delay"]
                if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
                    raise ControlError("target_delay must be a number of seconds >= 0")
                self.target_delay = float(delay)
            if "exit_at" in body:
                text = body["exit_at"]
                if text is None:
                    self.exit_at = None
                else:
                    try:
                        self.exit_at = position.parse_through(str(text))
                    except ValueError as exc:
                        raise ControlError(f"exit_at: {exc}") from exc
            return {"paused": self.paused, "target_delay": self.target_delay,
                    "exit_at": describe_position(self.exit_at)}
