"""Everything the producer needs to run, already validated by the command line."""
from __future__ import annotations

from dataclasses import dataclass, field

from bson.timestamp import Timestamp

from kafkashake.oplog.namespaces import NamespaceFilter
from kafkashake.producer.change_stream_source import WatchSettings
from kafkashake.producer.publisher import Encoding
from kafkashake.producer.snapshot import SnapshotSettings
from kafkashake.schemas.partitioning import PartitionBy


@dataclass(frozen=True)
class ProducerSettings:
    source_uri: str
    brokers: str
    topic: str
    name: str = "kafkashake"
    encoding: Encoding = field(default_factory=Encoding)
    compression: str = "none"
    fetch_method: str = "oplog"
    namespaces: NamespaceFilter = NamespaceFilter()
    exit_at: Timestamp | None = None
    ddl: bool = False
    control_token: str | None = None
    watch: WatchSettings = field(default_factory=WatchSettings)
    sync_mode: str = "incr"
    ha: bool = False
    ha_lease_s: float = 10.0
    snapshot: SnapshotSettings = field(default_factory=SnapshotSettings)
    start_position: str = "latest"
    checkpoint_uri: str | None = None
    checkpoint_db: str = "kafkashake"
    checkpoint_collection: str = "checkpoint"
    conflict_db: str = "kafkashake_conflict"
    partitions: int = 8
    replication_factor: int = -1
    partition_by: PartitionBy = PartitionBy.ID
    topic_config: dict[str, str] = field(default_factory=dict)
    heartbeat_interval_s: float = 2.0
    kafka_properties: dict[str, str] = field(default_factory=dict)
    checkpoint_interval_s: float = 1.0
    startup_timeout_s: float = 30.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9100

    @property
    def private_databases(self) -> frozenset[str]:
        return frozenset({self.checkpoint_db, self.conflict_db})
