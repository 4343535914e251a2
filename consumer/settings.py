"""Everything the consumer needs to run, already validated by the command line."""
from __future__ import annotations

from dataclasses import dataclass, field

from bson.timestamp import Timestamp

from kafkashake.consumer.applier import ReplayPolicy


@dataclass(frozen=True)
class ConsumerSettings:
    brokers: str
    topic: str
    dest_uri: str
    topic_pattern: str = ""
    group: str = ""
    checkpoint_db: str = "kafkashake"
    checkpoint_collection: str = "consumer_checkpoint"
    kafka_properties: dict[str, str] = field(default_factory=dict)
    batch_max_messages: int = 2000
    policy: ReplayPolicy = field(default_factory=ReplayPolicy)
    conflict_write_to: str = "none"
    conflict_db: str = "kafkashake_conflict"
    target_delay_s: float = 0.0
    exit_at: Timestamp | None = None
    control_token: str | None = None
    on_error: str = "dlq"
    dead_letter_topic: str = ""
    poll_timeout_s: float = 0.1
    startup_timeout_s: float = 30.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9101

    @property
    def subscription(self) -> list[str]:
        """librdkafka treats a subscription starting with `^` as a regular expression."""
        return [self.topic_pattern] if self.topic_pattern else [self.topic]

    @property
    def dead_letter_topic_name(self) -> str:
        """--dead-letter-topic, by default `<topic>.dlq` (`<group>.dlq` with --topic-pattern)."""
        return self.dead_letter_topic or f"{self.topic or self.group_id}.dlq"

    @property
    def group_id(self) -> str:
        return self.group or f"kafkashake-{self.topic or self.topic_pattern}"
