"""Keeping credentials out of anything printed: logs, errors, dead-letter headers and status output.

Each process installs one `Redactor` built from its settings (`runtime.settings.secret_values`) when it starts;
passwords in connection strings are masked whether or not they were declared."""
from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]*)@")
SHORTEST_SECRET = 3


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= SHORTEST_SECRET}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{MASK}@", text)
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text


_installed = Redactor()


def install(redactor: Redactor) -> None:
    """Make `redactor` the one every printed text of this process goes through."""
    global _installed
    _installed = redactor


def redact(text: str) -> str:
    return _installed(text)
