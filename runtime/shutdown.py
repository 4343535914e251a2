"""Turning SIGTERM and SIGINT into a flag the main loop checks between batches."""
from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class ShutdownFlag:
    def __init__(self) -> None:
        self._event = threading.Event()

    def install(self) -> "ShutdownFlag":
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        return self

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self._event.is_set():
            log.warning("second signal: stopping without waiting", extra={"signal": signal.Signals(signum).name})
            raise SystemExit(130)
        log.info("stopping after the batch in hand", extra={"signal": signal.Signals(signum).name})
        self._event.set()

    def request(self) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)
