"""From oplog entries to publishable operations: what is skipped, and how transactions unwind."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from kafkashake.oplog.entry import (CRUD_OPS, DDL_COMMANDS, Operation, encode_operation, is_internal_namespace, is_migration,
                         operation_from, raw_bytes)
from kafkashake.oplog.namespaces import NamespaceFilter, command_target
from kafkashake.oplog.transactions import TransactionAssembler, is_transaction_command


class OperationExtractor:
    """Decides per entry what to publish. Counts what it passes over, by reason."""

    def __init__(self, private_databases: frozenset[str], namespaces: NamespaceFilter = NamespaceFilter(),
                 ddl: bool = False) -> None:
        self._private = private_databases
        self._namespaces = namespaces
        self._ddl = ddl
        self._transactions = TransactionAssembler()
        self.skipped: dict[str, int] = {}

    def hold_below(self) -> Timestamp | None:
        return self._transactions.oldest_open_position()

    def _skip(self, reason: str) -> list[Operation]:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        return []

    def _wanted(self, entry: Mapping[str, Any]) -> str | None:
        """None if the entry is to be published, else the reason it is not."""
        op = entry.get("op")
        if op not in CRUD_OPS:
            return "noop" if op == "n" else "command"
        if is_migration(entry):
            return "migration"
        if is_internal_namespace(entry.get("ns", ""), self._private):
            return "internal_namespace"
        if self._namespaces and not self._namespaces.allows(entry["ns"]):
            return "namespace_filter"
        return None

    def extract(self, entry: RawBSONDocument) -> list[Operation]:
        if is_transaction_command(entry):
            operations = []
            for inner in self._transactions.feed(entry):
                reason = self._wanted(inner)
                if reason is None:
                    operations.append(operation_from(inner, encode_operation(inner)))
                else:
                    self._skip(reason)
            return operations
        if entry.get("op") == "c" and self._ddl:
            return self._command(entry)
        reason = self._wanted(entry)
        if reason is not None:
            return self._skip(reason)
        return [operation_from(entry, raw_bytes(entry))]

    def _command(self, entry: RawBSONDocument) -> list[Operation]:
        """--ddl: schema changes are published (keyed by namespace; the publisher sends them to every partition)."""
        command = entry["o"]
        name = next(iter(command))
        target = command_target(entry["ns"], command)
        if name not in DDL_COMMANDS:
            return self._skip("command")
        if is_internal_namespace(target if "." in target else f"{target}.x", self._private):
            return self._skip("internal_namespace")
        if self._namespaces and not self._namespaces.allows(target):
            return self._skip("namespace_filter")
        return [Operation(entry["ts"], "c", entry["ns"], None, raw_bytes(entry), entry.get("wall"), None)]
