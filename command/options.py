"""Command-line options, declared once as tables, and turned into typed settings.

Every option also reads `KAFKASHAKE_<OPTION>` and a `--config` TOML file; precedence is flag > environment > file >
default. A value that cannot be parsed is refused by typer (exit code 2, naming the option); rules that span
options live in the settings' `check()`."""
from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from bson.timestamp import Timestamp

from kafkashake import config_file
from kafkashake.oplog import position
from kafkashake.oplog.namespaces import NamespaceFilter
from kafkashake.runtime.settings import (KafkaSettings, LogFormat, LogLevel, ProcessSettings, SaslMechanism, Secret,
                                         SecurityProtocol)

ENV_PREFIX = "KAFKASHAKE_"
KEYWORD = inspect.Parameter.KEYWORD_ONLY


def env(name: str) -> str:
    return ENV_PREFIX + name.upper()


@dataclass(frozen=True)
class Opt:
    """One option: its parameter name, type, default, flags and help; its environment variable is derived from the
    name unless `env_name` is given (None: none); `extra` goes to typer.Option (min, max, callback, ...)."""

    name: str
    kind: Any
    default: Any
    flags: tuple[str, ...]
    help: str
    env_name: str | None = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def parameter(self) -> inspect.Parameter:
        variable = None if self.env_name is None else env(self.env_name or self.name)
        info = typer.Option(*self.flags, help=self.help, envvar=variable, show_envvar=variable is not None,
                            **self.extra)
        return inspect.Parameter(self.name, KEYWORD, default=self.default, annotation=Annotated[self.kind, info])


def with_options(function: Callable[..., Any], *tables: Iterable[Opt]) -> Callable[..., Any]:
    """Give `function(**values)` the signature typer reads its options from."""
    function.__signature__ = inspect.Signature([opt.parameter() for table in tables for opt in table])  # type: ignore[attr-defined]
    return function


# ---------------------------------------------------------------------------------------------- single values


def brokers(value: str) -> str:
    parts = [part.strip() for part in value.split(",") if part.strip()]
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise typer.BadParameter(f"{part!r} is not HOST:PORT; accepted: HOST:PORT[,HOST:PORT...]")
    return ",".join(parts)


def mongo_uri(value: Optional[str]) -> Optional[str]:
    if value is not None and not value.startswith(("mongodb://", "mongodb+srv://")):
        raise typer.BadParameter("accepted: a MongoDB connection string starting with mongodb:// or mongodb+srv://")
    return value


def exit_at(value: Optional[str]) -> Optional[str]:
    if value is not None:
        try:
            position.parse(value)
        except ValueError as exc:
            raise typer.BadParameter(f"{exc}; accepted: an ISO-8601 UTC time or <seconds>,<increment>") from exc
    return value


def exit_point(value: Optional[str]) -> Optional[Timestamp]:
    """Everything at or before TIME: an ISO time covers every increment of its second."""
    return None if value is None else position.parse_through(value)


def key_values(values: list[str] | None, option: str, example: str) -> dict[str, str]:
    """`["linger.ms=5", ...]` as a dict; refuses an entry that is not key=value."""
    properties: dict[str, str] = {}
    for pair in values or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{pair!r} is not key=value (for example {option} {example})",
                                     param_hint=f"'{option}'")
        properties[name.strip()] = value
    return properties


def read_secret_file(path: Path, option: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint=f"'{option}'") from exc
    if not value:
        raise typer.BadParameter(f"{path} is empty", param_hint=f"'{option}'")
    return value


def uri_from(value: Optional[str], path: Optional[Path], option: str, required: bool = True) -> Optional[Secret]:
    """A connection string from OPTION or OPTION-file (exactly one of them when required)."""
    if value is not None and path is not None:
        raise typer.BadParameter(f"give {option} or {option}-file, not both", param_hint=f"'{option}'")
    if path is not None:
        value = read_secret_file(path, f"{option}-file")
        try:
            mongo_uri(value)
        except typer.BadParameter as exc:
            raise typer.BadParameter(str(exc.message), param_hint=f"'{option}-file'") from exc
    if value is None:
        if required:
            raise typer.BadParameter(f"give {option} (or {option}-file with the connection string in a file)",
                                     param_hint=f"'{option}'")
        return None
    return Secret(value)


def namespace_filter(white: str, black: str) -> NamespaceFilter:
    try:
        return NamespaceFilter.parse(white, black)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--filter-namespace-white'") from exc


# ---------------------------------------------------------------------------------------------- --config


def config_option(role: str, all_names: Callable[[], set[str]]) -> Opt:
    def load(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
        if value is None:
            return value
        own = {p.name for p in ctx.command.params if p.name and p.name != "config"}
        try:
            values = config_file.load(value, role, own, all_names())
        except config_file.ConfigFileError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--config'") from exc
        ctx.default_map = {**(ctx.default_map or {}), **values}
        return value

    return Opt("config", Optional[Path], None, ("--config",), "TOML file with option values (keys as option names, "
               "e.g. source_uri). Flags and environment variables take precedence over it.",
               extra={"exists": False, "is_eager": True, "callback": load})


# ---------------------------------------------------------------------------------------------- shared tables

KAFKA = [
    Opt("kafka_property", Optional[list[str]], None, ("-X", "--kafka-property"),
        "librdkafka property key=value, passed through (repeatable)."),
    Opt("kafka_security_protocol", Optional[SecurityProtocol], None, ("--kafka-security-protocol",),
        "Kafka: plaintext (default), ssl, sasl_plaintext or sasl_ssl."),
    Opt("kafka_sasl_mechanism", Optional[SaslMechanism], None, ("--kafka-sasl-mechanism",),
        "Kafka SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."),
    Opt("kafka_sasl_username", Optional[str], None, ("--kafka-sasl-username",), "Kafka SASL user."),
    Opt("kafka_sasl_password", Optional[str], None, ("--kafka-sasl-password",),
        "Kafka SASL password (prefer the -file option or the environment variable)."),
    Opt("kafka_sasl_password_file", Optional[Path], None, ("--kafka-sasl-password-file",),
        "File holding the Kafka SASL password (e.g. a mounted secret)."),
    Opt("kafka_ssl_ca_location", Optional[Path], None, ("--kafka-ssl-ca-location",),
        "Kafka TLS: CA certificate(s) to verify the brokers (PEM)."),
    Opt("kafka_ssl_certificate_location", Optional[Path], None, ("--kafka-ssl-certificate-location",),
        "Kafka TLS: client certificate (PEM), for mutual TLS."),
    Opt("kafka_ssl_key_location", Optional[Path], None, ("--kafka-ssl-key-location",),
        "Kafka TLS: client private key (PEM), for mutual TLS."),
]

BROKERS = Opt("brokers", str, ..., ("--brokers",), "Kafka bootstrap servers, HOST:PORT[,HOST:PORT...].",
              extra={"callback": brokers})

FILTERS = [
    Opt("filter_namespace_white", str, "", ("--filter-namespace-white",), "Only these namespaces: 'db' or 'db.coll', "
        "separated by ';' (also inside transactions)."),
    Opt("filter_namespace_black", str, "", ("--filter-namespace-black",), "All namespaces but these: 'db' or "
        "'db.coll', separated by ';'."),
    Opt("exit_at", Optional[str], None, ("--exit-at",), "Stop cleanly (checkpoint, commit, exit 0) once every event "
        "with a source time at or before this ISO-8601 UTC time or <seconds>,<increment> is done (MongoShake's exit "
        "point).", extra={"callback": exit_at}),
    Opt("control_token", Optional[str], None, ("--control-token",), "Bearer token that POST /control must carry; "
        "without it /control is refused."),
]


def process_options(role: str, default_port: int) -> list[Opt]:
    return [
        Opt("startup_timeout_seconds", float, 30.0, ("--startup-timeout-seconds",), "How long to keep trying to reach "
            "MongoDB and Kafka at start-up before exiting 1 with what to check; later, how long Kafka may be "
            "unreachable before /readyz reports it.", extra={"min": 1}),
        Opt("metrics_host", str, "127.0.0.1", ("--metrics-host",), "Address the metrics endpoint binds to."),
        Opt("metrics_port", int, default_port, ("--metrics-port",), "Port of /metrics (0: any free port).",
            env_name=f"{role}_metrics_port", extra={"min": 0, "max": 65535}),
        Opt("log_format", LogFormat, LogFormat.TEXT, ("--log-format",), "Log line format."),
        Opt("log_level", LogLevel, LogLevel.INFO, ("--log-level",), "Lowest level logged."),
    ]


def kafka_settings(values: dict[str, Any]) -> KafkaSettings:
    password, password_file = values["kafka_sasl_password"], values["kafka_sasl_password_file"]
    if password is not None and password_file is not None:
        raise typer.BadParameter("give --kafka-sasl-password or --kafka-sasl-password-file, not both",
                                 param_hint="'--kafka-sasl-password'")
    if password_file is not None:
        password = read_secret_file(password_file, "--kafka-sasl-password-file")
    return KafkaSettings(
        brokers=values["brokers"], security_protocol=values["kafka_security_protocol"],
        sasl_mechanism=values["kafka_sasl_mechanism"], sasl_username=values["kafka_sasl_username"],
        sasl_password=Secret(password) if password else None, ssl_ca_location=values["kafka_ssl_ca_location"],
        ssl_certificate_location=values["kafka_ssl_certificate_location"],
        ssl_key_location=values["kafka_ssl_key_location"],
        properties=key_values(values["kafka_property"], "-X", "linger.ms=5"))


def process_settings(values: dict[str, Any]) -> ProcessSettings:
    token = values.get("control_token")
    return ProcessSettings(values["metrics_host"], values["metrics_port"], values["log_format"], values["log_level"],
                           Secret(token) if token else None, values["startup_timeout_seconds"])


def topic_pattern(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    try:
        re.compile(value)
    except re.error as exc:
        raise typer.BadParameter(f"not a regular expression: {exc}") from exc
    return value if value.startswith("^") else "^" + value


def lane_count(value: str) -> str:
    if value != "auto" and not (value.isascii() and value.isdecimal() and 1 <= int(value) <= 16):
        raise typer.BadParameter(f"{value!r}: give auto or a number from 1 to 16")
    return value
