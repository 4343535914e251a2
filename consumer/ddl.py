"""Applying DDL commands (oplog form) to the destination, with `--ddl`.

Covers create, drop, renameCollection, dropDatabase, createIndexes (and commitIndexBuild), dropIndexes and
collMod. Index builds that have not committed (startIndexBuild, abortIndexBuild) change nothing."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymongo import MongoClient
from pymongo.errors import OperationFailure

NAMESPACE_NOT_FOUND = 26
INDEX_NOT_FOUND = 27
NAMESPACE_EXISTS = 48
INDEX_ALREADY_EXISTS = (68, 85, 86)
PASSED_OVER = frozenset({"startIndexBuild", "abortIndexBuild", "applyOps", "commitTransaction", "abortTransaction"})
HARMLESS_ON_REPLAY = {
    "create": (NAMESPACE_EXISTS,),
    "drop": (NAMESPACE_NOT_FOUND,),
    "dropIndexes": (NAMESPACE_NOT_FOUND, INDEX_NOT_FOUND),
    "createIndexes": INDEX_ALREADY_EXISTS,
    "renameCollection": (NAMESPACE_NOT_FOUND,),
    "collMod": (NAMESPACE_NOT_FOUND, INDEX_NOT_FOUND),
}


# Options a client may give createIndexes. Specs logged by servers carry internal fields besides these (`ns` up to
# 4.2, SecantusDB's `entryFormat`), which createIndexes refuses.
INDEX_OPTIONS = frozenset({
    "key", "name", "v", "unique", "sparse", "partialFilterExpression", "expireAfterSeconds", "hidden", "collation",
    "storageEngine", "weights", "default_language", "language_override", "textIndexVersion",
    "2dsphereIndexVersion", "bits", "min", "max", "bucketSize", "wildcardProjection", "prepareUnique",
    "columnstoreProjection", "background",
})


def index_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in spec.items() if name in INDEX_OPTIONS}


def command_name(command: Mapping[str, Any]) -> str:
    return next(iter(command))


def _as_server_command(command: Mapping[str, Any]) -> dict[str, Any] | None:
    """The oplog's command shape differs from the command a client sends for several DDL operations."""
    name = command_name(command)
    if name in PASSED_OVER:
        return None
    if name == "create":
        return {k: v for k, v in command.items() if k != "idIndex"}
    if name == "createIndexes" and "indexes" not in command:  # oplog form: one index spec inline
        return {"createIndexes": command["createIndexes"], "indexes": [index_spec(command)]}
    if name in ("createIndexes", "commitIndexBuild"):
        return {"createIndexes": command[name], "indexes": [index_spec(spec) for spec in command["indexes"]]}
    if name == "dropIndexes":
        return {"dropIndexes": command["dropIndexes"], "index": command.get("index", "*")}
    if name in ("drop", "dropDatabase", "collMod", "renameCollection"):
        return {k: v for k, v in command.items() if k not in ("numRecords", "stayTemp")}
    return dict(command)


def apply_command(client: MongoClient, ns: str, command: Mapping[str, Any]) -> bool:
    """Run one DDL command against the destination. Returns False for commands deliberately passed over.
    Replays are harmless: re-creating what exists or dropping what is gone is not an error."""
    server_command = _as_server_command(command)
    if server_command is None:
        return False
    name = command_name(server_command)
    database = "admin" if name == "renameCollection" else ns.partition(".")[0]
    try:
        client[database].command(server_command)
    except OperationFailure as exc:
        if exc.code not in HARMLESS_ON_REPLAY.get(name, ()):
            raise
    return True
