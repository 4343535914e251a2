"""`kafkashake consumer run`: its options, and the settings they make."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from kafkashake import options
from kafkashake.consumer.settings import (ConflictTarget, ConsumerSettings, Destination, OnError, Problems,
                                          ReplayPolicy, Subscription)
from kafkashake.oplog.namespaces import NamespaceMap
from kafkashake.options import Opt

SUBSCRIPTION = [
    options.BROKERS,
    Opt("dest_uri", Optional[str], None, ("--dest-uri",), "MongoDB connection string of the destination.",
        extra={"callback": options.mongo_uri}),
    Opt("dest_uri_file", Optional[Path], None, ("--dest-uri-file",), "File holding the destination connection string "
        "(e.g. a mounted secret)."),
    Opt("topic", Optional[str], None, ("--topic",), "Topic to replay (this or --topic-pattern)."),
    Opt("topic_pattern", Optional[str], None, ("--topic-pattern",), "Regular expression of the topics to replay, e.g. "
        "'^cdc\\..*' (this or --topic).", extra={"callback": options.topic_pattern}),
    Opt("group", Optional[str], None, ("--group",), "Consumer group id (default: kafkashake-<topic or pattern>)."),
    Opt("checkpoint_db", str, "kafkashake", ("--checkpoint-db",), "Destination database of the consumer checkpoints."),
    Opt("batch_max_messages", int, 2000, ("--batch-max-messages",), "Most messages applied per batch.",
        extra={"min": 1}),
    Opt("write_lanes", str, "auto", ("--write-lanes",), "Concurrent ordered bulk writes per collection (1-16), a "
        "document's changes always in one. auto: measured while running (1, 2, 4 or 8, whichever the destination "
        "takes fastest; the kafkashake_consumer_write_lanes gauge shows it). Collections with a unique index "
        "besides _id always use one.", extra={"callback": options.lane_count}),
]
POLICY = [
    Opt("ddl", bool, False, ("--ddl",), "Apply DDL events (create, drop, rename, dropDatabase, createIndexes, "
        "dropIndexes, collMod/modify); without it they are passed over and counted."),
    Opt("target_delay", float, 0.0, ("--target-delay",), "Seconds: apply no event before its source time plus this "
        "(incr_sync.target_delay). Checked per event; the backlog waits in Kafka.", extra={"min": 0}),
    Opt("upsert", bool, False, ("--upsert",), "An update whose document is missing creates what an upsert of it would "
        "(incr_sync.executor.upsert); otherwise it is a conflict."),
    Opt("insert_on_dup_update", bool, False, ("--insert-on-dup-update",), "An insert whose _id exists replaces that "
        "document with the inserted one (insert_on_dup_update); otherwise it is a conflict."),
    Opt("conflict_write_to", ConflictTarget, ConflictTarget.NONE, ("--conflict-write-to",), "none: count and log "
        "conflicts; db: also record each one, with the whole event, in --conflict-db.<source namespace>."),
    Opt("conflict_db", str, "kafkashake_conflict", ("--conflict-db",), "Destination database for conflict records."),
    *options.FILTERS,
    Opt("on_error", OnError, OnError.DLQ, ("--on-error",), "A message that cannot be decoded, or an event the "
        "destination rejects for good (not a conflict, not transient): dlq writes it to the dead-letter topic and "
        "carries on; stop exits 1 before it."),
    Opt("dead_letter_topic", Optional[str], None, ("--dead-letter-topic",), "Where dead letters go (created if "
        "missing). Default: <topic>.dlq, or <group>.dlq with --topic-pattern."),
    Opt("drop_existing", bool, False, ("--drop-existing",), "Drop each destination collection when the producer's "
        "copy of it begins (--sync-mode all|full), so documents that exist only in the destination go. Off by "
        "default: a copy then inserts or replaces by _id and leaves other documents alone."),
    Opt("transform_namespace", str, "", ("--transform-namespace",), "Rename on apply: "
        "'fromDb.fromColl:toDb.toColl;fromDb2:toDb2' (also DDL targets and transaction operations)."),
]


def consumer_settings(values: dict[str, Any]) -> ConsumerSettings:
    """Typed settings from the option values; cross-option rules are the settings' own `check()`."""
    try:
        transform = NamespaceMap.parse(values["transform_namespace"])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--transform-namespace'") from exc
    policy = ReplayPolicy(values["upsert"], values["insert_on_dup_update"], values["ddl"],
                          options.namespace_filter(values["filter_namespace_white"], values["filter_namespace_black"]),
                          transform, values["drop_existing"], values["target_delay"])
    subscription = Subscription(values["topic"] or "", values["topic_pattern"] or "", values["group"] or "",
                                values["batch_max_messages"])
    destination = Destination(options.uri_from(values["dest_uri"], values["dest_uri_file"], "--dest-uri"),  # type: ignore[arg-type]
                              values["checkpoint_db"], write_lanes=0 if values["write_lanes"] == "auto" else int(values["write_lanes"]))
    problems = Problems(values["conflict_write_to"], values["conflict_db"], values["on_error"],
                        values["dead_letter_topic"] or "")
    return ConsumerSettings(options.kafka_settings(values), subscription, destination, policy, problems,
                            options.process_settings(values), options.exit_point(values["exit_at"]))


def option_tables(config: Opt) -> list[list[Opt]]:
    return [SUBSCRIPTION, POLICY, options.KAFKA, options.process_options("consumer", 9101), [config]]
