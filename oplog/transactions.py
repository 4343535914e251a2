"""Turning `applyOps` entries into individual operations, including multi-entry and prepared transactions.

mongod logs a transaction as one `applyOps` command under `admin.$cmd`, or, when large, as a chain of
`applyOps` entries marked `partialTxn` that ends with an entry without it (unprepared) or with a
`commitTransaction` / `abortTransaction` (prepared). Operations of a chain are only released once the
transaction commits, all with the committing entry's `ts`, so a reader never publishes what was aborted."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bson.timestamp import Timestamp

import bson

TRANSACTION_CONTEXT_FIELDS = ("lsid", "txnNumber", "wall")


def is_transaction_command(entry: Mapping[str, Any]) -> bool:
    if entry.get("op") != "c" or entry.get("ns") != "admin.$cmd":
        return False
    command = entry["o"]
    return any(name in command for name in ("applyOps", "commitTransaction", "abortTransaction"))


def _session_key(entry: Mapping[str, Any]) -> tuple[bytes, int] | None:
    lsid = entry.get("lsid")
    if lsid is None or "txnNumber" not in entry:
        return None
    lsid_bytes = lsid.raw if hasattr(lsid, "raw") else bson.encode(lsid)
    return lsid_bytes, int(entry["txnNumber"])


def unwind(entry: Mapping[str, Any], inner_ops: Any, ts: Timestamp) -> Iterator[dict[str, Any]]:
    """Inner operations of `applyOps`, each given the enclosing entry's `ts`, `lsid`, `txnNumber` and `wall`.
    Nested `applyOps` commands are unwound recursively."""
    context = {name: entry[name] for name in TRANSACTION_CONTEXT_FIELDS if name in entry}
    for inner in inner_ops:
        if inner.get("op") == "c" and "applyOps" in inner.get("o", {}):
            yield from unwind(entry, inner["o"]["applyOps"], ts)
            continue
        operation = dict(inner)
        operation["ts"] = ts
        operation.update(context)
        yield operation


@dataclass
class _OpenTransaction:
    first_ts: Timestamp
    batches: list[tuple[Mapping[str, Any], Any]] = field(default_factory=list)


class TransactionAssembler:
    """Feeds on `admin.$cmd` transaction entries; returns operations once their transaction has committed."""

    def __init__(self) -> None:
        self._open: dict[tuple[bytes, int], _OpenTransaction] = {}

    def oldest_open_position(self) -> Timestamp | None:
        """The first entry of the oldest transaction still open. A checkpoint must stay below it, or a
        restart would never see the transaction's first part again."""
        if not self._open:
            return None
        return min(txn.first_ts for txn in self._open.values())

    def feed(self, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
        command = entry["o"]
        ts = entry["ts"]
        key = _session_key(entry)
        if "applyOps" in command:
            held = bool(command.get("partialTxn")) or bool(command.get("prepare"))
            if key is not None and (held or key in self._open):
                txn = self._open.setdefault(key, _OpenTransaction(first_ts=ts))
                if any(part["ts"] == ts for part, _ in txn.batches):  # read again after a source error
                    return []
                txn.batches.append((entry, command["applyOps"]))
                if held:
                    return []
                return self._release(key, ts)
            return list(unwind(entry, command["applyOps"], ts))
        if "commitTransaction" in command:
            return self._release(key, ts) if key in self._open else []
        if "abortTransaction" in command:
            self._open.pop(key, None)  # type: ignore[arg-type]
            return []
        return []

    def _release(self, key: tuple[bytes, int], ts: Timestamp) -> list[dict[str, Any]]:
        txn = self._open.pop(key)
        operations: list[dict[str, Any]] = []
        for entry, inner_ops in txn.batches:
            operations.extend(unwind(entry, inner_ops, ts))
        return operations
