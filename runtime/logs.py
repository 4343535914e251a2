"""Structured logging: `text` (key=value) or `json` lines, with secrets masked in every record."""
from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
import time
from typing import Any

from kafkashake.runtime.secrets import redact

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in record.__dict__.items() if key not in _RESERVED}


def _when(record: logging.LogRecord) -> str:
    moment = _dt.datetime.fromtimestamp(record.created, tz=_dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": _when(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(_fields(record))
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(payload, default=str))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [_when(record), record.levelname.lower(), record.name, record.getMessage()]
        parts += [f"{key}={value}" for key, value in _fields(record).items()]
        line = " ".join(str(part) for part in parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


def configure(log_format: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pymongo", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class RateLimitedLog:
    """At most `per_window` warnings every `window_s` seconds, then one line saying how many were suppressed."""

    def __init__(self, logger: logging.Logger, per_window: int = 20, window_s: float = 10.0) -> None:
        self._logger = logger
        self._per_window = per_window
        self._window_s = window_s
        self._window_start = time.monotonic()
        self._count = 0
        self._suppressed = 0

    def admit(self) -> bool:
        """Whether one more line may be written now; counts the ones that may not."""
        now = time.monotonic()
        if now - self._window_start >= self._window_s:
            if self._suppressed:
                self._logger.warning("similar log lines suppressed", extra={"suppressed": self._suppressed})
            self._window_start, self._count, self._suppressed = now, 0, 0
        if self._count < self._per_window:
            self._count += 1
            return True
        self._suppressed += 1
        return False

    def warning(self, message: str, **fields: Any) -> None:
        if self.admit():
            self._logger.warning(message, extra=fields)
