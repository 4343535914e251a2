"""`kafkashake producer run`: its options, and the settings they make."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from kafkashake import options
from kafkashake.options import Opt
from kafkashake.oplog import position
from kafkashake.producer.settings import (BeforeChange, CheckpointSettings, Compression, Encoding, FetchMethod,
                                          FullDocument, IndexCreation, LargeMessages, OnHistoryLost, ProducerSettings,
                                          SnapshotSettings, SourceSettings, SyncMode, TopicSettings, WatchSettings)
from kafkashake.schemas import topics
from kafkashake.schemas.codec import AVRO_CODECS, JsonMode, MessageFormat, avro_codec_available
from kafkashake.schemas.partitioning import PartitionBy


def _start_position(value: str) -> str:
    if value in ("earliest", "latest"):
        return value
    try:
        position.parse(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{exc}; accepted: earliest, latest, an ISO-8601 UTC time, or <seconds>,<increment>")
    return value


def _topic_template(value: str) -> str:
    try:
        topics.validate_template(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    return value


def _avro_codec(value: str) -> str:
    if value not in AVRO_CODECS:
        raise typer.BadParameter(f"accepted: {', '.join(AVRO_CODECS)}")
    if not avro_codec_available(value):
        raise typer.BadParameter(f"the {value} codec needs its library: pip install 'kafkashake[codecs]'")
    return value


TOPIC = [
    options.BROKERS,
    Opt("topic", str, ..., ("--topic",), "Kafka topic, or a template with {db} and {coll} for one topic per namespace "
        "(e.g. cdc.{db}.{coll}).", extra={"callback": _topic_template}),
]
SOURCE_URI = [
    Opt("source_uri", Optional[str], None, ("--source-uri",), "MongoDB connection string of the source replica set (or "
        "mongos with --fetch-method change_stream).", extra={"callback": options.mongo_uri}),
    Opt("source_uri_file", Optional[Path], None, ("--source-uri-file",), "File holding the source connection string "
        "(e.g. a mounted secret)."),
]
ENCODING = [
    Opt("message_format", MessageFormat, MessageFormat.RAW, ("--format",), "raw: Avro container batches of events; json: "
        "one Extended JSON event per message; bson: one BSON event per message, exactly as read. See docs/formats.md.",
        env_name="format"),
    Opt("json_mode", JsonMode, JsonMode.CANONICAL, ("--json-mode",), "Extended JSON flavour of the json format."),
    Opt("avro_codec", str, "null", ("--avro-codec",), "Avro block codec of the raw format: null, deflate, snappy or "
        "zstandard (the last two need the codecs extra).", extra={"callback": _avro_codec}),
    Opt("batch_max_events", int, 500, ("--batch-max-events",), "raw: most events per message.", extra={"min": 1}),
    Opt("batch_max_bytes", int, 1024 * 1024, ("--batch-max-bytes",), "raw: a message is sent once its events reach "
        "this many bytes.", extra={"min": 1024}),
    Opt("batch_linger_ms", int, 50, ("--batch-linger-ms",), "raw: longest wait for a batch to fill before it is sent.",
        extra={"min": 0}),
    Opt("compression", Compression, Compression.NONE, ("--compression",), "Kafka-level compression of messages."),
]
READING = [
    Opt("fetch_method", FetchMethod, FetchMethod.OPLOG, ("--fetch-method",), "How changes are read: oplog (tail "
        "local.oplog.rs of a replica set) or change_stream (also through mongos)."),
    Opt("watch_db", Optional[str], None, ("--watch-db",), "change_stream: watch only this database."),
    Opt("watch_coll", Optional[str], None, ("--watch-coll",), "change_stream: watch only this collection of "
        "--watch-db."),
    Opt("full_document", FullDocument, FullDocument.DEFAULT, ("--full-document",), "change_stream: fullDocument "
        "option for updates."),
    Opt("full_document_before_change", BeforeChange, BeforeChange.OFF, ("--full-document-before-change",),
        "change_stream: pre-images (the collection needs changeStreamPreAndPostImages)."),
    Opt("show_expanded_events", bool, False, ("--show-expanded-events",), "change_stream: also DDL events (create, "
        "createIndexes, dropIndexes, modify, shardCollection)."),
]
FILTERS_AND_MODES = [
    *options.FILTERS,
    Opt("publish_ddl", bool, False, ("--ddl",), "oplog: also publish DDL (create, drop, renameCollection, "
        "dropDatabase, createIndexes, dropIndexes, collMod). DDL goes to every partition as a barrier, so consumers "
        "apply it in order.", env_name="ddl"),
    Opt("on_history_lost", OnHistoryLost, OnHistoryLost.FAIL, ("--on-history-lost",), "change_stream: when the resume "
        "point is gone, fail (exit 3) or restart-at-now (the gap is logged, counted and published as an event)."),
    Opt("sync_mode", SyncMode, SyncMode.INCR, ("--sync-mode",), "incr: stream changes only. all: first copy the "
        "existing collections, indexes and documents through Kafka (as snapshot events), then stream from a position "
        "captured before the copy. full: copy, then exit. A copy resumes where it stopped."),
    Opt("ha", bool, False, ("--ha",), "High availability: run several instances with the same --name; they elect one "
        "leader through a lease in the checkpoint database, the others stand by and take over when it expires. "
        "Checkpoint writes are fenced by the lease epoch."),
    Opt("ha_lease_seconds", float, 10.0, ("--ha-lease-seconds",), "--ha: lease length; a standby takes over at most "
        "this long after the leader stops renewing.", extra={"min": 2}),
    Opt("index_creation", IndexCreation, IndexCreation.BEFORE, ("--index-creation",), "Copy: publish each collection's "
        "indexes before its documents, after them (faster bulk load on the destination), or not at all."),
    Opt("snapshot_parallel", int, 4, ("--snapshot-parallel",), "Copy: collections or _id ranges read at the same "
        "time.", extra={"min": 1, "max": 64}),
    Opt("snapshot_split_docs", int, 100_000, ("--snapshot-split-docs",), "Copy: split collections larger than this "
        "many documents into _id ranges of about this size, read in parallel (0: never split).", extra={"min": 0}),
    Opt("snapshot_batch_size", int, 1000, ("--snapshot-batch-size",), "Copy: documents per read batch, and per unit "
        "of saved progress.", extra={"min": 1}),
    Opt("start_position", str, "latest", ("--start-position",), "Where to start when no checkpoint exists: earliest, "
        "latest, an ISO-8601 UTC time (changes at or after it) or <seconds>,<increment> (changes after that "
        "position).", extra={"callback": _start_position}),
]
CHECKPOINT_AND_TOPICS = [
    Opt("name", str, "kafkashake", ("--name",), "Task name: the checkpoint document's _id."),
    Opt("checkpoint_uri", Optional[str], None, ("--checkpoint-uri",), "MongoDB holding the checkpoint (default: the "
        "source).", extra={"callback": options.mongo_uri}),
    Opt("checkpoint_uri_file", Optional[Path], None, ("--checkpoint-uri-file",), "File holding the checkpoint store's "
        "connection string."),
    Opt("checkpoint_db", str, "kafkashake", ("--checkpoint-db",), "Database of the checkpoint collection; never "
        "replicated."),
    Opt("partitions", int, 8, ("--partitions",), "Partitions of each topic the producer creates.", extra={"min": 1}),
    Opt("replication_factor", int, -1, ("--replication-factor",), "Replication factor of each topic the producer "
        "creates (-1: the broker's default).", extra={"min": -1}),
    Opt("partition_by", PartitionBy, PartitionBy.ID, ("--partition-by",), "Message key: id (namespace + _id, keeps "
        "per-document order), collection or database."),
    Opt("topic_config", Optional[list[str]], None, ("--topic-config",), "Topic setting key=value for the topics the "
        "producer creates, e.g. retention.ms=604800000 or max.message.bytes=8388608 (repeatable)."),
    Opt("large_message", LargeMessages, LargeMessages.FRAGMENT, ("--large-message",), "A message larger than its topic "
        "accepts (max.message.bytes, read from the brokers): fragment sends it in fragments that kafkashake's "
        "consumer reassembles (docs/formats.md); fail stops the producer, naming the change."),
    Opt("heartbeat_interval_seconds", float, 2.0, ("--heartbeat-interval-seconds",), "A partition that had no message "
        "for this long gets a heartbeat with the producer's watermark, so consumers know how far they are complete "
        "(--exit-at, lag, unique indexes). 0: none.", extra={"min": 0}),
]


def producer_settings(values: dict[str, Any]) -> ProducerSettings:
    """Typed settings from the option values; cross-option rules are the settings' own `check()`."""
    source = SourceSettings(
        uri=options.uri_from(values["source_uri"], values["source_uri_file"], "--source-uri"),  # type: ignore[arg-type]
        fetch_method=values["fetch_method"],
        watch=WatchSettings(values["watch_db"], values["watch_coll"], values["full_document"],
                            values["full_document_before_change"], values["show_expanded_events"],
                            values["on_history_lost"]),
        namespaces=options.namespace_filter(values["filter_namespace_white"], values["filter_namespace_black"]),
        ddl=values["publish_ddl"], start_position=values["start_position"], sync_mode=values["sync_mode"],
        snapshot=SnapshotSettings(values["snapshot_parallel"], values["snapshot_batch_size"],
                                  values["snapshot_split_docs"], values["index_creation"]))
    encoding = Encoding(values["message_format"], values["json_mode"], values["avro_codec"],
                        values["batch_max_events"], values["batch_max_bytes"], values["batch_linger_ms"] / 1000,
                        values["large_message"])
    topic_settings = TopicSettings(
        values["topic"], encoding, values["partition_by"], values["partitions"], values["replication_factor"],
        options.key_values(values["topic_config"], "--topic-config", "retention.ms=604800000"),
        values["compression"], values["heartbeat_interval_seconds"])
    checkpoint = CheckpointSettings(
        name=values["name"], db=values["checkpoint_db"], ha=values["ha"], ha_lease_s=values["ha_lease_seconds"],
        uri=options.uri_from(values["checkpoint_uri"], values["checkpoint_uri_file"], "--checkpoint-uri", False))
    return ProducerSettings(source, options.kafka_settings(values), topic_settings, checkpoint,
                            options.process_settings(values), options.exit_point(values["exit_at"]))


def option_tables(config: Opt) -> list[list[Opt]]:
    return [TOPIC, SOURCE_URI, ENCODING, READING, FILTERS_AND_MODES, CHECKPOINT_AND_TOPICS, options.KAFKA,
            options.process_options("producer", 9100), [config]]
