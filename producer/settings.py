"""Everything the producer needs to run, in groups, with their choices as enums. `check()` holds every rule that
spans options; the command line only fills these in."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from bson.timestamp import Timestamp

from kafkashake.oplog.namespaces import NamespaceFilter
from kafkashake.runtime.settings import Invalid, KafkaSettings, ProcessSettings, Secret
from kafkashake.schemas import topics
from kafkashake.schemas.codec import JsonMode, MessageFormat
from kafkashake.schemas.partitioning import PartitionBy


class FetchMethod(str, enum.Enum):
    OPLOG = "oplog"
    CHANGE_STREAM = "change_stream"


class SyncMode(str, enum.Enum):
    ALL = "all"
    FULL = "full"
    INCR = "incr"


class IndexCreation(str, enum.Enum):
    BEFORE = "before"
    AFTER = "after"
    NONE = "none"


class FullDocument(str, enum.Enum):
    DEFAULT = "default"
    UPDATE_LOOKUP = "updateLookup"
    WHEN_AVAILABLE = "whenAvailable"
    REQUIRED = "required"


class BeforeChange(str, enum.Enum):
    OFF = "off"
    WHEN_AVAILABLE = "whenAvailable"
    REQUIRED = "required"


class OnHistoryLost(str, enum.Enum):
    FAIL = "fail"
    RESTART_AT_NOW = "restart-at-now"


class Compression(str, enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    SNAPPY = "snappy"
    LZ4 = "lz4"
    ZSTD = "zstd"


class LargeMessages(str, enum.Enum):
    FRAGMENT = "fragment"
    FAIL = "fail"


@dataclass(frozen=True)
class WatchSettings:
    """--fetch-method change_stream: what to watch and what the events carry."""

    watch_db: str | None = None
    watch_coll: str | None = None
    full_document: FullDocument = FullDocument.DEFAULT
    full_document_before_change: BeforeChange = BeforeChange.OFF
    show_expanded_events: bool = False
    on_history_lost: OnHistoryLost = OnHistoryLost.FAIL

    @property
    def given(self) -> bool:
        return bool(self.watch_db or self.watch_coll or self.show_expanded_events
                    or self.full_document is not FullDocument.DEFAULT
                    or self.full_document_before_change is not BeforeChange.OFF)


@dataclass(frozen=True)
class SnapshotSettings:
    """--sync-mode all|full: how the copy of existing data runs."""

    parallel: int = 4
    batch_size: int = 1000
    split_documents: int = 100_000
    index_creation: IndexCreation = IndexCreation.BEFORE


@dataclass(frozen=True)
class SourceSettings:
    uri: Secret
    fetch_method: FetchMethod = FetchMethod.OPLOG
    watch: WatchSettings = field(default_factory=WatchSettings)
    namespaces: NamespaceFilter = NamespaceFilter()
    ddl: bool = False
    start_position: str = "latest"
    sync_mode: SyncMode = SyncMode.INCR
    snapshot: SnapshotSettings = field(default_factory=SnapshotSettings)


@dataclass(frozen=True)
class Encoding:
    """How events become messages."""

    message_format: MessageFormat = MessageFormat.RAW
    json_mode: JsonMode = JsonMode.CANONICAL
    avro_codec: str = "null"
    batch_max_events: int = 500
    batch_max_bytes: int = 1024 * 1024
    batch_linger_s: float = 0.05
    large_messages: LargeMessages = LargeMessages.FRAGMENT


@dataclass(frozen=True)
class TopicSettings:
    template: str
    encoding: Encoding = field(default_factory=Encoding)
    partition_by: PartitionBy = PartitionBy.ID
    partitions: int = 8
    replication_factor: int = -1
    topic_config: dict[str, str] = field(default_factory=dict)
    compression: Compression = Compression.NONE
    heartbeat_interval_s: float = 2.0


@dataclass(frozen=True)
class CheckpointSettings:
    name: str = "kafkashake"
    uri: Secret | None = None
    db: str = "kafkashake"
    collection: str = "checkpoint"
    interval_s: float = 1.0
    ha: bool = False
    ha_lease_s: float = 10.0


@dataclass(frozen=True)
class ProducerSettings:
    source: SourceSettings
    kafka: KafkaSettings
    topics: TopicSettings
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    process: ProcessSettings = field(default_factory=lambda: ProcessSettings(metrics_port=9100))
    exit_at: Timestamp | None = None
    conflict_db: str = "kafkashake_conflict"

    @property
    def private_databases(self) -> frozenset[str]:
        """Databases a pipeline keeps its own state in: never replicated."""
        return frozenset({self.checkpoint.db, self.conflict_db})

    def check(self) -> None:
        """Rules that span options; each names the option to change."""
        source = self.source
        if source.watch.watch_coll and not source.watch.watch_db:
            raise Invalid("--watch-coll", "--watch-coll needs --watch-db")
        if source.fetch_method is FetchMethod.OPLOG and source.watch.given:
            raise Invalid("--fetch-method", "--watch-db, --watch-coll, --full-document*, --show-expanded-events only "
                                            "work with --fetch-method change_stream")
        if source.sync_mode is not SyncMode.INCR and source.start_position != "latest":
            raise Invalid("--start-position", "--start-position only applies to --sync-mode incr: a copy captures "
                                              "its own start position just before it begins")
        try:
            topics.validate_template(self.topics.template)
        except ValueError as exc:
            raise Invalid("--topic", str(exc)) from exc
        self.kafka.check()
