"""What librdkafka says about the brokers, for both processes: its log lines go through ours (rate-limited, secrets
masked), connection trouble is remembered for /readyz and the lag, and errors no retry can cure (a wrong password,
a missing permission) stop the process with a message that says what to check."""
from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import KafkaError

from runtime.logs import RateLimitedLog

UNREACHABLE_CODES = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE,
                               KafkaError._TIMED_OUT})
AUTHENTICATION_CODES = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
                                  KafkaError._SSL})
AUTHORIZATION_CODES = frozenset({KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
                                 KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                                 KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED})
SYSLOG_TO_LOGGING = {0: logging.CRITICAL, 1: logging.CRITICAL, 2: logging.CRITICAL, 3: logging.ERROR,
                     4: logging.WARNING, 5: logging.INFO, 6: logging.INFO, 7: logging.DEBUG}


class RateLimitedFilter(logging.Filter):
    """librdkafka repeats itself (a line per broker per reconnect attempt): at most a few lines a window."""

    def __init__(self, per_window: int = 5, window_s: float = 30.0) -> None:
        super().__init__()
        self._limiter = RateLimitedLog(logging.getLogger("kafkashake.kafka"), per_window, window_s)

    def filter(self, record: logging.LogRecord) -> bool:
        return self._limiter.admit()


def librdkafka_logger(role: str) -> logging.Logger:
    """The `logger` to hand a librdkafka client, so its lines are ours: structured, masked, rate-limited."""
    logger = logging.getLogger(f"kafkashake.{role}.librdkafka")
    if not any(isinstance(f, RateLimitedFilter) for f in logger.filters):
        logger.addFilter(RateLimitedFilter())
    return logger


class KafkaHealth:
    def __init__(self, role: str, brokers: str, not_ready_after_s: float = 30.0) -> None:
        self._role = role
        self._not_ready_after_s = not_ready_after_s
        self._brokers = brokers
        self._log = RateLimitedLog(logging.getLogger(f"kafkashake.{role}"), per_window=1, window_s=15.0)
        self.fatal: str | None = None
        self.unreachable_since: float | None = None
        self.last_error: str | None = None

    def client_options(self) -> dict[str, Any]:
        return {"error_cb": self.on_error, "logger": librdkafka_logger(self._role)}

    def on_error(self, error: KafkaError) -> None:
        code = error.code()
        self.last_error = error.str()
        if code in AUTHENTICATION_CODES:
            self.fatal = (f"Kafka at {self._brokers} refused to authenticate this client: {error.str()}. Check the "
                          "SASL mechanism, user name and password (--kafka-sasl-*), the security protocol, and the "
                          "TLS files (--kafka-ssl-*)")
        elif code in AUTHORIZATION_CODES:
            self.fatal = f"Kafka refused an operation: {error.str()}. Grant this principal the missing permission"
        elif error.fatal():
            self.fatal = f"Kafka client error that cannot be retried: {error.str()}"
        elif code in UNREACHABLE_CODES:
            if self.unreachable_since is None:
                self.unreachable_since = time.monotonic()
            self._log.warning("Kafka unreachable, retrying", brokers=self._brokers, error=error.str(),
                              unreachable_s=round(time.monotonic() - self.unreachable_since))
        else:
            self._log.warning("Kafka client error, retrying", error=error.str())

    def reached(self) -> None:
        """Something went through the brokers just now."""
        if self.unreachable_since is not None:
            logging.getLogger(f"kafkashake.{self._role}").info(
                "Kafka reachable again", extra={"after_s": round(time.monotonic() - self.unreachable_since, 1)})
        self.unreachable_since = None

    def unreachable_for(self) -> float:
        return 0.0 if self.unreachable_since is None else time.monotonic() - self.unreachable_since

    def readiness(self) -> tuple[bool, str] | None:
        """None when Kafka is fine; otherwise not ready, and why."""
        if self.fatal is not None:
            return False, self.fatal
        unreachable = self.unreachable_for()
        if unreachable > self._not_ready_after_s:
            return False, f"Kafka unreachable for {unreachable:.0f} s: {self.last_error}"
        return None
