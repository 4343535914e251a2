"""Everything the consumer needs to run, in groups, with their choices as enums. `check()` holds every rule that
spans options; the command line only fills these in."""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from bson.timestamp import Timestamp

from kafkashake.oplog.namespaces import NamespaceFilter, NamespaceMap
from kafkashake.runtime.settings import Invalid, KafkaSettings, ProcessSettings, Secret


class OnError(str, enum.Enum):
    DLQ = "dlq"
    STOP = "stop"


class ConflictTarget(str, enum.Enum):
    NONE = "none"
    DB = "db"


@dataclass(frozen=True)
class ReplayPolicy:
    """MongoShake's executor options, with their names: `upsert`, `insert_on_dup_update`, plus DDL and namespaces."""

    upsert: bool = False
    insert_on_dup_update: bool = False
    ddl: bool = False
    namespaces: NamespaceFilter = NamespaceFilter()
    transform: NamespaceMap = NamespaceMap({}, {})
    drop_existing: bool = False
    target_delay_s: float = 0.0


@dataclass(frozen=True)
class Subscription:
    """Which topics, in which group, in batches of how many messages."""

    topic: str = ""
    topic_pattern: str = ""
    group: str = ""
    batch_max_messages: int = 2000
    poll_timeout_s: float = 0.1

    @property
    def topics(self) -> list[str]:
        """librdkafka treats a subscription starting with `^` as a regular expression."""
        return [self.topic_pattern] if self.topic_pattern else [self.topic]

    @property
    def group_id(self) -> str:
        return self.group or f"kafkashake-{self.topic or self.topic_pattern}"


@dataclass(frozen=True)
class Destination:
    uri: Secret
    checkpoint_db: str = "kafkashake"
    checkpoint_collection: str = "consumer_checkpoint"
    write_lanes: int = 0  # concurrent bulk writes per collection; 0: measured (consumer/write_lanes.py)


@dataclass(frozen=True)
class Problems:
    """Where conflicts and events that cannot be applied go."""

    conflict_write_to: ConflictTarget = ConflictTarget.NONE
    conflict_db: str = "kafkashake_conflict"
    on_error: OnError = OnError.DLQ
    dead_letter_topic: str = ""


@dataclass(frozen=True)
class ConsumerSettings:
    kafka: KafkaSettings
    subscription: Subscription
    destination: Destination
    policy: ReplayPolicy = field(default_factory=ReplayPolicy)
    problems: Problems = field(default_factory=Problems)
    process: ProcessSettings = field(default_factory=lambda: ProcessSettings(metrics_port=9101))
    exit_at: Timestamp | None = None

    @property
    def dead_letter_topic(self) -> str:
        """--dead-letter-topic, by default `<topic>.dlq` (`<group>.dlq` with --topic-pattern)."""
        subscription = self.subscription
        return self.problems.dead_letter_topic or f"{subscription.topic or subscription.group_id}.dlq"

    @property
    def private_databases(self) -> frozenset[str]:
        return frozenset({self.destination.checkpoint_db, self.problems.conflict_db})

    def check(self) -> None:
        """Rules that span options; each names the option to change."""
        subscription = self.subscription
        if bool(subscription.topic) == bool(subscription.topic_pattern):
            raise Invalid("--topic", "give exactly one of --topic and --topic-pattern")
        pattern = subscription.topic_pattern
        if (pattern and self.problems.on_error is OnError.DLQ
                and re.search(pattern, self.dead_letter_topic)):
            raise Invalid("--dead-letter-topic", f"the dead-letter topic {self.dead_letter_topic!r} matches "
                                                 "--topic-pattern, so the consumer would replay its own dead "
                                                 "letters; give a --dead-letter-topic outside the pattern")
        self.kafka.check()
