"""Namespace rules in MongoShake's syntax: filters (`db` or `db.coll`, separated by `;`) and renames
(`fromDb.fromColl:toDb.toColl;fromDb2:toDb2`)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _split_rules(text: str) -> list[str]:
    return [rule.strip() for rule in text.split(";") if rule.strip()]


def _matches(rule: str, ns: str) -> bool:
    """`db` matches every collection of db (and the database itself); `db.coll` matches that collection."""
    db, _, coll = ns.partition(".")
    return rule == ns or ("." not in rule and rule == db)


@dataclass(frozen=True)
class NamespaceFilter:
    white: tuple[str, ...] = ()
    black: tuple[str, ...] = ()

    @classmethod
    def parse(cls, white: str = "", black: str = "") -> "NamespaceFilter":
        if white and black:
            raise ValueError("give a white list or a black list, not both")
        return cls(tuple(_split_rules(white)), tuple(_split_rules(black)))

    def __bool__(self) -> bool:
        return bool(self.white or self.black)

    def allows(self, ns: str) -> bool:
        if self.white:
            return any(_matches(rule, ns) for rule in self.white)
        return not any(_matches(rule, ns) for rule in self.black)

    def server_match(self) -> dict[str, Any] | None:
        """The same rule as a change-stream `$match` on `ns.db` / `ns.coll`, so filtering happens on the server."""
        def clause(rule: str) -> dict[str, Any]:
            db, _, coll = rule.partition(".")
            return {"ns.db": db, "ns.coll": coll} if coll else {"ns.db": db}

        if self.white:
            return {"$match": {"$or": [clause(rule) for rule in self.white]}}
        if self.black:
            return {"$match": {"$nor": [clause(rule) for rule in self.black]}}
        return None


@dataclass(frozen=True)
class NamespaceMap:
    """Renames applied on replay; a `db.coll` rule wins over a `db` rule."""

    collections: Mapping[str, str]
    databases: Mapping[str, str]

    @classmethod
    def parse(cls, text: str) -> "NamespaceMap":
        collections: dict[str, str] = {}
        databases: dict[str, str] = {}
        for rule in _split_rules(text):
            source, sep, target = rule.partition(":")
            if not sep or not source or not target or ("." in source) != ("." in target):
                raise ValueError(f"{rule!r} is not fromDb.fromColl:toDb.toColl or fromDb:toDb")
            (collections if "." in source else databases)[source] = target
        return cls(collections, databases)

    def __bool__(self) -> bool:
        return bool(self.collections or self.databases)

    def map(self, ns: str) -> str:
        if ns in self.collections:
            return self.collections[ns]
        db, dot, coll = ns.partition(".")
        return f"{self.databases[db]}{dot}{coll}" if db in self.databases else ns

    def map_command(self, ns: str, command: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The command's namespace (`db.$cmd`) and collection arguments, renamed."""
        db = ns.partition(".")[0]
        name = next(iter(command))
        mapped = dict(command)
        if name == "renameCollection":
            mapped["renameCollection"] = self.map(command["renameCollection"])
            mapped["to"] = self.map(command["to"])
            return f"{mapped['renameCollection'].partition('.')[0]}.$cmd", mapped
        target = command[name]
        if isinstance(target, str):  # drop, create, createIndexes, collMod, ... name their collection
            new_db, _, new_coll = self.map(f"{db}.{target}").partition(".")
            mapped[name] = new_coll
            return f"{new_db}.$cmd", mapped
        return f"{self.map(db)}.$cmd", mapped


def command_target(ns: str, command: Mapping[str, Any]) -> str:
    """The namespace a command acts on: `db.coll` for collection commands, `db` for database commands."""
    db = ns.partition(".")[0]
    target = command.get(next(iter(command)))
    if isinstance(target, str):
        return target if "." in target else f"{db}.{target}"
    return db


def affected_namespaces(ns: str, command: Mapping[str, Any]) -> list[str]:
    """Every namespace an oplog DDL command changes: `db.coll`, or `db` for a database-wide command. A rename
    changes two."""
    target = command_target(ns, command)
    if "renameCollection" in command and isinstance(command.get("to"), str):
        return [target, command["to"]]
    return [target]
