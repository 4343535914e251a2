"""Retrying transient failures with capped exponential backoff and jitter."""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from pymongo import errors as mongo_errors

T = TypeVar("T")
log = logging.getLogger(__name__)

TRANSIENT_MONGO_ERRORS = (
    mongo_errors.AutoReconnect,
    mongo_errors.ConnectionFailure,
    mongo_errors.NetworkTimeout,
    mongo_errors.ServerSelectionTimeoutError,
    mongo_errors.WaitQueueTimeoutError,
)
# NotWritablePrimary, InterruptedAtShutdown, InterruptedDueToReplStateChange, PrimarySteppedDown,
# ShutdownInProgress, HostUnreachable, HostNotFound, NetworkTimeout, SocketException, ExceededTimeLimit,
# WriteConflict (112), and CursorNotFound (43: a tailing cursor killed while paused or idle is simply reopened).
TRANSIENT_MONGO_CODES = frozenset({6, 7, 43, 89, 91, 112, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})


def is_transient_write_error(error: dict) -> bool:  # type: ignore[type-arg]
    """One entry of a bulk write's `writeErrors`: a primary stepping down mid-batch is reported there, per write,
    not as a failed command."""
    return error.get("code") in TRANSIENT_MONGO_CODES or "RetryableWriteError" in (error.get("errorLabels") or [])


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT_MONGO_ERRORS):
        return True
    if isinstance(exc, mongo_errors.PyMongoError) and exc.has_error_label("RetryableWriteError"):
        return True
    if isinstance(exc, mongo_errors.OperationFailure) and exc.code in TRANSIENT_MONGO_CODES:
        return True
    if isinstance(exc, mongo_errors.BulkWriteError):
        write_errors = exc.details.get("writeErrors") or []
        concern_errors = exc.details.get("writeConcernErrors") or []
        return (bool(write_errors or concern_errors) and all(is_transient_write_error(e) for e in write_errors)
                and all(e.get("code") in TRANSIENT_MONGO_CODES for e in concern_errors))
    return False


class Backoff:
    """Delays of 0.1 s, 0.2 s, 0.4 s ... capped at `maximum`, each with up to 20 % jitter."""

    def __init__(self, initial: float = 0.1, maximum: float = 10.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * (2**self.attempt))
        self.attempt += 1
        return delay * (1 + random.random() * 0.2)

    def reset(self) -> None:
        self.attempt = 0


def retry_transient(
    action: Callable[[], T],
    what: str,
    should_stop: Callable[[], bool] = lambda: False,
    backoff: Backoff | None = None,
    give_up_after_s: float | None = None,
) -> T:
    """Run `action` until it succeeds; transient MongoDB errors are retried, others propagate.
    Raises `InterruptedError` if `should_stop()` turns true while waiting, and re-raises the last
    transient error once `give_up_after_s` has passed."""
    backoff = backoff or Backoff()
    started = time.monotonic()
    while True:
        try:
            return action()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if give_up_after_s is not None and time.monotonic() - started >= give_up_after_s:
                raise
            delay = backoff.next_delay()
            log.warning("transient error, retrying", extra={"during": what, "error": str(exc), "retry_in_s": round(delay, 2)})
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if should_stop():
                    raise InterruptedError(f"stopped while retrying {what}") from exc
                time.sleep(min(0.1, delay))
