"""Connecting to MongoDB: one way to build clients, and a start-up check that fails clearly."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pymongo import MongoClient, ReadPreference
from pymongo.database import Database
from pymongo.read_concern import ReadConcern
from pymongo.errors import OperationFailure, PyMongoError

from kafkashake.runtime.errors import FatalError
from kafkashake.runtime.retry import is_transient, retry_transient
from kafkashake.runtime.secrets import redact

SERVER_SELECTION_TIMEOUT_MS = 10_000
STARTUP_REACH_TIMEOUT_S = 30.0


def connect(uri: str, appname: str, **options: Any) -> MongoClient:
    return MongoClient(uri, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS, appname=appname, **options)


def latest(client: MongoClient, name: str, **options: Any) -> Database:
    """The database as the primary holds it now, whatever read preference or read concern the URI asks for: what
    the consumer computes from its reads (replacements, checkpoints) must see its own latest writes."""
    return client.get_database(name, read_preference=ReadPreference.PRIMARY, read_concern=ReadConcern("local"),
                               **options)


def ensure_reachable(client: MongoClient, what: str, uri: str, should_stop: Callable[[], bool],
                     timeout_s: float = STARTUP_REACH_TIMEOUT_S) -> None:
    """Ping `client`, retrying for up to `timeout_s`; then stop with a message that says what to check."""
    try:
        retry_transient(lambda: client.admin.command("ping"), f"connecting to the {what}", should_stop,
                        give_up_after_s=timeout_s)
    except OperationFailure as exc:
        raise FatalError(
            f"the {what} at {redact(uri)} refused the connection: {exc} (code {exc.code}). "
            "Check the user, password and authSource in the connection string"
        ) from exc
    except PyMongoError as exc:
        if not is_transient(exc):
            raise
        raise FatalError(
            f"cannot reach the {what} at {redact(uri)} within {timeout_s:.0f} s: {exc}. "
            "Check the host, port, TLS options and that the server is up"
        ) from exc
