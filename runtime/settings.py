"""Settings both processes share: how they reach Kafka, and how they present themselves (logs, the HTTP endpoint).

Secret values are `Secret`s where they are declared; redaction is built from the settings (`secret_values`), so it
is complete however the settings were made (the command line, a benchmark, a test)."""
from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kafkashake.runtime.errors import ConfigurationError

SECRET_PROPERTY_WORDS = ("password", "secret", "token", "sasl.oauthbearer.config", "key.pem", "keystore")


class Invalid(ConfigurationError):
    """Settings that cannot work: names the option and what it accepts (exit code 2)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class Secret:
    """A value never to be printed: its repr is masked, and redaction masks it wherever it turns up."""

    value: str

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def reveal(self) -> str:
        return self.value


def is_secret_property(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_PROPERTY_WORDS)


def _uri_password(uri: str) -> str | None:
    for host_part in uri.split(","):
        try:
            password = urlsplit(host_part).password
        except ValueError:
            continue
        if password:
            return password
    return None


def secret_values(settings: Any) -> Iterator[str]:
    """Every secret a settings object holds: `Secret`s (and passwords in connection strings they hold), and secret
    librdkafka properties, at any depth."""
    if isinstance(settings, Secret):
        yield settings.value
        password = _uri_password(settings.value)
        if password:
            yield password
    elif is_dataclass(settings):
        for item in fields(settings):
            yield from secret_values(getattr(settings, item.name))
    elif isinstance(settings, dict):
        for name, value in settings.items():
            if isinstance(value, str) and is_secret_property(str(name)):
                yield value
            else:
                yield from secret_values(value)


class SecurityProtocol(str, enum.Enum):
    PLAINTEXT = "plaintext"
    SSL = "ssl"
    SASL_PLAINTEXT = "sasl_plaintext"
    SASL_SSL = "sasl_ssl"


class SaslMechanism(str, enum.Enum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach Kafka: the first-class security settings, then `-X` properties (which win)."""

    brokers: str
    security_protocol: SecurityProtocol | None = None
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    properties: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        protocol = self.security_protocol
        sasl = protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)
        if sasl and (self.sasl_mechanism is None or not self.sasl_username or self.sasl_password is None):
            raise Invalid("--kafka-security-protocol", f"--kafka-security-protocol {protocol.value} needs "  # type: ignore[union-attr]
                          "--kafka-sasl-mechanism, --kafka-sasl-username and --kafka-sasl-password (or -file)")
        if not sasl and (self.sasl_mechanism is not None or self.sasl_username or self.sasl_password is not None):
            raise Invalid("--kafka-sasl-mechanism", "SASL options need --kafka-security-protocol sasl_ssl "
                                                    "(or sasl_plaintext)")
        for name, path in self._tls_files().items():
            option = f"--kafka-{name.replace('.', '-')}"
            if protocol not in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
                raise Invalid(option, f"{option} needs --kafka-security-protocol ssl or sasl_ssl")
            if not path.is_file():
                raise Invalid(option, f"{path} is not a readable file")

    def _tls_files(self) -> dict[str, Path]:
        files = {"ssl.ca.location": self.ssl_ca_location, "ssl.certificate.location": self.ssl_certificate_location,
                 "ssl.key.location": self.ssl_key_location}
        return {name: path for name, path in files.items() if path is not None}

    def librdkafka(self) -> dict[str, str]:
        """The librdkafka properties these settings mean."""
        config: dict[str, str] = {}
        if self.security_protocol is not None:
            config["security.protocol"] = self.security_protocol.value
        if self.sasl_mechanism is not None:
            config["sasl.mechanism"] = self.sasl_mechanism.value
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            config["sasl.password"] = self.sasl_password.reveal()
        config.update({name: str(path) for name, path in self._tls_files().items()})
        return {**config, **self.properties}

    def client_config(self, defaults: dict[str, Any]) -> dict[str, Any]:
        return {"bootstrap.servers": self.brokers, **defaults, **self.librdkafka()}


class LogFormat(str, enum.Enum):
    TEXT = "text"
    JSON = "json"


class LogLevel(str, enum.Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class ProcessSettings:
    """How a process presents itself: its log, its HTTP endpoint, and how long it tries to reach its servers."""

    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    log_format: LogFormat = LogFormat.TEXT
    log_level: LogLevel = LogLevel.INFO
    control_token: Secret | None = None
    startup_timeout_s: float = 30.0
