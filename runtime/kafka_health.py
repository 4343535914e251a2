"""What librdkafka says about the brokers, for both processes: its log lines go through ours (rate-limited, secrets
masked), connection trouble is remembered for /readyz and the lag, and errors no retry can cure (a wrong password,
a missing permission) stop the process with a message that says what to check."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError

from kafkashake.runtime.logs import RateLimitedLog

UNREACHABLE_CODES = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE,
                               KafkaError._TIMED_OUT})
AUTHENTICATION_CODES = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
                                  KafkaError._SSL})


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


@dataclass(frozen=True)
class KafkaUse:
    """What a process does with Kafka, so an error can name the permission it lacks."""

    brokers: str
    topics: str = ""
    group: str | None = None
    writes: bool = False

    def explain(self, error: KafkaError) -> str | None:
        """What to do about an error no retry can cure, or None for any other."""
        code = error.code()
        if code in AUTHENTICATION_CODES:
            return (f"Kafka at {self.brokers} refused to authenticate this client: {error.str()}. Check the SASL "
                    "mechanism, user name and password (--kafka-sasl-*), the security protocol, and the TLS files "
                    "(--kafka-ssl-*)")
        if code == KafkaError.GROUP_AUTHORIZATION_FAILED:
            return (f"not authorised to join consumer group {self.group!r}: {error.str()}. Grant this principal Read "
                    "on the group")
        if code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
            operation = "Write" if self.writes else "Read"
            extra = (" (the idempotent producer asks for a producer id, which Kafka grants to principals with Write "
                     "on some topic, or IdempotentWrite on the cluster)" if self.writes else "")
            return (f"Kafka refused to let this process {operation.lower()} topic {self.topics}: {error.str()}. Grant "
                    f"this principal {operation} and Describe on the topic{extra}")
        if error.fatal():
            return f"Kafka client error that cannot be retried: {error.str()}"
        return None


class KafkaHealth:
    def __init__(self, role: str, use: KafkaUse, not_ready_after_s: float = 30.0) -> None:
        self._role = role
        self.use = use
        self._not_ready_after_s = not_ready_after_s
        self._log = RateLimitedLog(logging.getLogger(f"kafkashake.{role}"), per_window=1, window_s=15.0)
        self.fatal: str | None = None
        self.unreachable_since: float | None = None
        self.last_error: str | None = None

    def client_options(self) -> dict[str, Any]:
        """Options for every librdkafka client of the process: errors and log lines come here."""
        return {"error_cb": self.on_error, "logger": librdkafka_logger(self._role)}

    def on_error(self, error: KafkaError) -> None:
        code = error.code()
        self.last_error = error.str()
        fatal = self.use.explain(error)
        if fatal is not None:
            self.fatal = self.fatal or fatal
        elif code in UNREACHABLE_CODES:
            if self.unreachable_since is None:
                self.unreachable_since = time.monotonic()
            self._log.warning("Kafka unreachable, retrying", brokers=self.use.brokers, error=error.str(),
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

    def failure(self, error: KafkaError, otherwise: str) -> str:
        """The message to stop with for `error`: an explanation, an earlier fatal error, or `otherwise`."""
        return self.use.explain(error) or self.fatal or otherwise

    def readiness(self) -> tuple[bool, str] | None:
        """None when Kafka is fine; otherwise not ready, and why."""
        if self.fatal is not None:
            return False, self.fatal
        unreachable = self.unreachable_for()
        if unreachable > self._not_ready_after_s:
            return False, f"Kafka unreachable for {unreachable:.0f} s: {self.last_error}"
        return None
