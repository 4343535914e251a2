"""Keeping credentials out of anything printed: logs, errors and status output."""
from __future__ import annotations

import re
import threading
from urllib.parse import urlsplit

MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]*)@")
_SECRET_PROPERTY_WORDS = ("password", "secret", "token", "sasl.oauthbearer.config", "key.pem", "keystore")

_known: set[str] = set()
_lock = threading.Lock()


def register(secret: str | None) -> None:
    """Remember a secret value so it is masked wherever it appears in printed text."""
    if secret and len(secret) >= 3:
        with _lock:
            _known.add(secret)


def register_uri(uri: str | None) -> None:
    if not uri:
        return
    for host_part in uri.split(","):
        try:
            password = urlsplit(host_part).password
        except ValueError:
            password = None
        register(password)
    match = _USERINFO.search(uri)
    if match:
        register(match.group("password"))


def is_secret_property(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_PROPERTY_WORDS)


def redact(text: str) -> str:
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{MASK}@", text)
    with _lock:
        secrets = sorted(_known, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def redact_uri(uri: str) -> str:
    return redact(uri)
