"""`--config FILE`: a TOML file whose keys are the command's option names.

Keys may be written `source_uri` or `source-uri`. Keys of the other role's command are allowed, so one
file can serve both processes; a `[producer]` or `[consumer]` table applies to that role only. Values feed
click's `default_map`, which gives the precedence flag > environment variable > file > built-in default."""
from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROLE_TABLES = ("producer", "consumer")


class ConfigFileError(ValueError):
    pass


def _normalise(value: Any) -> Any:
    if isinstance(value, Mapping):  # -X given as a table: { "linger.ms" = "5" }
        return [f"{key}={item}" for key, item in value.items()]
    return value


def load(path: Path, role: str, own_options: Iterable[str], known_options: Iterable[str]) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ConfigFileError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path} is not valid TOML: {exc}") from exc
    own, known = set(own_options), set(known_options)
    values: dict[str, Any] = {}
    sections: list[tuple[str, Mapping[str, Any], set[str]]] = [("", document, known)]
    if isinstance(document.get(role), Mapping):
        sections.append((f"[{role}] ", document[role], own))
    for where, table, accepted in sections:
        for key, value in table.items():
            if key in ROLE_TABLES and isinstance(value, Mapping):
                continue
            name = key.replace("-", "_")
            if name not in accepted:
                raise ConfigFileError(
                    f"unknown key {where}{key!r} in {path}; accepted keys: {', '.join(sorted(own))}"
                )
            if name in own:
                values[name] = _normalise(value)
    return values
