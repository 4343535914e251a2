"""librdkafka configuration: our defaults, then `-X key=value` pass-through (as kcat does)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kafkashake.runtime import secrets


def parse_properties(pairs: Iterable[str]) -> dict[str, str]:
    """`["linger.ms=5", "sasl.password=..."]` → dict. Raises ValueError naming the bad entry."""
    properties: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{pair!r} is not key=value (for example -X linger.ms=5)")
        properties[name.strip()] = value
        if secrets.is_secret_property(name):
            secrets.register(value)
    return properties


def client_config(brokers: str, defaults: Mapping[str, Any], overrides: Mapping[str, str]) -> dict[str, Any]:
    config: dict[str, Any] = {"bootstrap.servers": brokers}
    config.update(defaults)
    config.update(overrides)
    return config


def printable(config: Mapping[str, Any]) -> dict[str, Any]:
    return {name: (secrets.MASK if secrets.is_secret_property(name) else value) for name, value in config.items()}
