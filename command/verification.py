"""Comparing a destination with its source, namespace by namespace: the collection, its document count, its
indexes (keys and options) and its documents, exactly as BSON (Int32 1, Int64 1 and Double 1.0 differ).

Documents are streamed from both sides in `_id` order as raw BSON and cut into ranges at the same `_id` bounds.
In hash mode a range whose documents hash alike on both sides is equal without looking further; the others are
compared document by document down to the first differing field."""
from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import bson
from bson import CodecOptions, Decimal128, ObjectId, Regex, Timestamp
from bson.binary import Binary, UuidRepresentation
from bson.codec_options import DatetimeConversion
from bson.code import Code
from bson.dbref import DBRef
from bson.datetime_ms import DatetimeMS
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.raw_bson import RawBSONDocument
from pymongo.collection import Collection
from pymongo.database import Database

from kafkashake.bson_elements import document_id, sorted_fields
from kafkashake.oplog.namespaces import NamespaceFilter, NamespaceMap

EXACT = CodecOptions(document_class=dict, tz_aware=True, uuid_representation=UuidRepresentation.UNSPECIFIED,
                     datetime_conversion=DatetimeConversion.DATETIME_MS)
RAW = CodecOptions(document_class=RawBSONDocument, uuid_representation=UuidRepresentation.UNSPECIFIED)
SYSTEM_DATABASES = frozenset({"admin", "local", "config"})
# Index options that describe how the index was built or stored rather than what it enforces.
INDEX_BOOKKEEPING = frozenset({"v", "ns", "background", "textIndexVersion", "2dsphereIndexVersion"})
MAX_REPORTED = 100
# Binary order of strings, whatever collation the collection has by default.
SIMPLE = {"locale": "simple"}
# Differences kept for --live to recheck; beyond this a namespace's differences are reported without a recheck.
MAX_KEPT = 100_000


@dataclass(frozen=True)
class Difference:
    """One document that is not the same on both sides: missing (only on the source), extra (only on the
    destination) or different (first differing field path with both values)."""

    ns: str
    id: Any
    kind: str
    path: str = ""
    source_value: Any = None
    dest_value: Any = None


@dataclass
class NamespaceResult:
    ns: str
    dest_ns: str
    exists: bool = True
    source_exists: bool = True
    source_count: int = 0
    dest_count: int = 0
    compared: int = 0
    equal: int = 0
    missing: int = 0
    extra: int = 0
    different: int = 0
    documents_checked: bool = False
    # Differences still changing on the source after every live recheck round: neither confirmed nor in flight.
    unsettled: int = 0
    unsettled_note: str = ""
    index_problems: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Equal: with documents compared, no difference among them (counts read at other moments may differ
        while replication runs); otherwise equal counts."""
        return (self.exists and self.source_exists and not self.index_problems and not (self.missing or self.extra or self.different)
                and (self.documents_checked or self.source_count == self.dest_count))

    @property
    def confirmed(self) -> bool:
        """Whether something differs for certain (not only documents still changing on the source)."""
        return (not self.exists or not self.source_exists or bool(self.index_problems)
                or self.missing + self.extra + self.different > self.unsettled
                or (not self.documents_checked and self.source_count != self.dest_count))

    @property
    def all_kept(self) -> bool:
        return self.missing + self.extra + self.different <= MAX_KEPT

    def record(self, difference: Difference) -> None:
        setattr(self, difference.kind, getattr(self, difference.kind) + 1)
        if len(self.differences) < MAX_KEPT:
            self.differences.append(difference)


# ---------------------------------------------------------------------------------------------- namespaces


def replicated_namespaces(source: Any, namespaces: NamespaceFilter, transform: NamespaceMap,
                          own_databases: set[str]) -> list[tuple[str, str]]:
    """(source namespace, destination namespace) of every source collection the consumer would replicate."""
    return sorted((ns, transform.map(ns) if transform else ns)
                  for ns in user_collections(source, own_databases) if namespaces.allows(ns))


def user_collections(client: Any, own_databases: set[str]) -> Iterator[str]:
    """Namespaces of the collections (not views, not system.*) outside the server's and kafkashake's databases."""
    for database in sorted(client.list_database_names()):
        if database in SYSTEM_DATABASES or database in own_databases:
            continue
        for info in client[database].list_collections(filter={"type": {"$ne": "view"}}):
            if not info["name"].startswith("system."):
                yield f"{database}.{info['name']}"


def destination_only(dest: Any, pairs: list[tuple[str, str]], namespaces: NamespaceFilter,
                     own_databases: set[str]) -> list[str]:
    """Destination collections in scope (allowed by the filters, or in a database the replicated namespaces map
    to) that no source collection maps to: a drop that never arrived, or a stray write."""
    targets = {dest_ns for _, dest_ns in pairs}
    target_databases = {dest_ns.partition(".")[0] for dest_ns in targets}
    return sorted(ns for ns in user_collections(dest, own_databases) if ns not in targets
                  and (namespaces.allows(ns) or ns.partition(".")[0] in target_databases))


def collection_of(client: Any, ns: str, codec: CodecOptions = RAW) -> Collection:
    database, _, name = ns.partition(".")
    return Database(client, database).get_collection(name, codec_options=codec)


def exists(client: Any, ns: str) -> bool:
    database, _, name = ns.partition(".")
    return bool(client[database].list_collection_names(filter={"name": name}))


# ---------------------------------------------------------------------------------------------- indexes


def index_specs(collection: Collection) -> dict[tuple, list[dict[str, Any]]]:
    """Indexes by their keys (names may differ between tools), each key with the options of every index on it
    (MongoDB allows several on one key when their collations or partial filters differ)."""
    specs: dict[tuple, list[dict[str, Any]]] = {}
    for index in collection.list_indexes():
        key = tuple((name, _direction(value)) for name, value in index["key"].items())
        specs.setdefault(key, []).append({name: value for name, value in index.items()
                                          if name not in INDEX_BOOKKEEPING and name not in ("key", "name")})
    return specs


def compare_indexes(source: Collection, dest: Collection) -> list[str]:
    wanted, present = index_specs(source), index_specs(dest)
    problems = []
    for key in sorted(wanted.keys() | present.keys(), key=repr):
        shown = "{" + ", ".join(f"{name}: {direction!r}" for name, direction in key) + "}"
        left, right = wanted.get(key, []), present.get(key, [])
        missing = [options for options in left if options not in right]
        extra = [options for options in right if options not in left]
        if len(missing) == 1 and len(extra) == 1:
            problems.append(f"index {shown} has options {missing[0]} on the source, {extra[0]} on the destination")
            continue
        problems += [f"index {shown} {options or ''} missing on the destination".replace("  ", " ")
                     for options in missing]
        problems += [f"index {shown} {options or ''} exists only on the destination".replace("  ", " ")
                     for options in extra]
    return problems


# ---------------------------------------------------------------------------------------------- values

EXIT_EQUAL, EXIT_DIFFERENT, EXIT_OPTIONS, EXIT_INCOMPLETE = 0, 1, 2, 3
RECHECK_ROUNDS = 5


def _direction(value: Any) -> Any:
    """An index key's direction or kind: 1, 1.0 and Int64 1 mean the same index."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def canonical(raw: bytes, ignore_field_order: bool) -> bytes:
    """The document's bytes; with `ignore_field_order`, every embedded document's elements sorted by name (stably,
    so duplicate names stay; arrays keep their order), without decoding a value."""
    return sorted_fields(raw) if ignore_field_order else raw


def first_difference(source: Any, dest: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first field path where two decoded documents differ, in type or value, with both values; None if equal.
    A missing field shows as the value `<missing>`."""
    if type(source) is not type(dest):
        return path or "(document)", source, dest
    if isinstance(source, dict):
        for position, (name, value) in enumerate(source.items()):
            where = f"{path}.{name}" if path else name
            if name not in dest:
                return where, value, "<missing>"
            if list(dest).index(name) != position:
                return where, f"field #{position}", f"field #{list(dest).index(name)}"
            found = first_difference(value, dest[name], where)
            if found:
                return found
        for name in dest:
            if name not in source:
                return (f"{path}.{name}" if path else name), "<missing>", dest[name]
        return None
    if isinstance(source, list):
        for index, (left, right) in enumerate(zip(source, dest)):
            found = first_difference(left, right, f"{path}.{index}" if path else str(index))
            if found:
                return found
        if len(source) != len(dest):
            return f"{path} (length)", len(source), len(dest)
        return None
    if isinstance(source, float) and source != source and dest != dest:
        return None  # NaN equals NaN as BSON bytes
    return None if source == dest else (path, source, dest)


# ------------------------------------------------------------------------------------- MongoDB's _id order

_NUMBER, _STRING, _OBJECT, _ARRAY = 10, 15, 20, 25


def id_order(value: Any) -> tuple:
    """A sort key that orders values as MongoDB compares BSON (the `_id` index's order): by canonical type, then
    by value; numbers of every type by value."""
    if isinstance(value, MinKey):
        return (0,)
    if value is None:
        return (5,)
    if isinstance(value, bool):
        return (40, value)
    if isinstance(value, Code):
        return (60 if value.scope is None else 65, str(value).encode())
    if isinstance(value, DBRef):
        return id_order(value.as_doc())
    if isinstance(value, (int, float, Decimal128)):
        number = value.to_decimal() if isinstance(value, Decimal128) else Decimal(value)
        return (_NUMBER, 0) if number.is_nan() else (_NUMBER, 1, number)
    if isinstance(value, str):
        return (_STRING, value.encode())
    if isinstance(value, dict):
        return (_OBJECT, tuple((id_order(item)[0], name.encode(), id_order(item)) for name, item in value.items()))
    if isinstance(value, list):
        return (_ARRAY, tuple(id_order(item) for item in value))
    if isinstance(value, (Binary, bytes)):
        subtype = value.subtype if isinstance(value, Binary) else 0
        return (30, len(value), subtype, bytes(value))
    if isinstance(value, ObjectId):
        return (35, value.binary)
    if isinstance(value, DatetimeMS):
        return (45, int(value))
    if isinstance(value, dt.datetime):
        return (45, DatetimeMS(value).__int__())
    if isinstance(value, Timestamp):
        return (47, value.time, value.inc)
    if isinstance(value, (Regex, re.Pattern)):
        return (50, str(value.pattern).encode(), _regex_flags(value.flags))
    if isinstance(value, MaxKey):
        return (100,)
    raise ValueError(f"an _id of type {type(value).__name__} cannot be ordered")


def _regex_flags(flags: Any) -> bytes:
    if isinstance(flags, str):
        return flags.encode()
    return "".join(letter for letter, bit in (("i", re.I), ("l", re.L), ("m", re.M), ("s", re.S), ("u", re.U),
                                              ("x", re.X)) if flags & bit).encode()


# ---------------------------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class Doc:
    id: Any
    order: tuple
    raw: bytes


def documents(collection: Collection, count_bytes: Callable[[int], None]) -> Iterator[Doc]:
    """Every document in `_id` order; refuses to go on if the server's order is not MongoDB's."""
    previous: tuple | None = None
    for document in collection.find({}, sort=[("_id", 1)], batch_size=1000, collation=SIMPLE):
        raw = bytes(document.raw)
        count_bytes(len(raw))
        identity = document_id(raw)
        order = id_order(identity)
        if previous is not None and order <= previous:
            raise RuntimeError(f"{collection.full_name} returned _id {identity!r} out of MongoDB's _id order; "
                               "cannot compare it by ranges")
        previous = order
        yield Doc(identity, order, raw)


def ranges(source: Iterator[Doc], dest: Iterator[Doc], size: int) -> Iterator[tuple[list[Doc], list[Doc]]]:
    """Both sides cut at the same `_id` bounds: every `size` source documents, and the destination's up to the
    last of them; what is left of the destination at the end is a last range."""
    pending: Doc | None = None
    while True:
        left = [doc for _, doc in zip(range(size), source)]
        right: list[Doc] = []
        if pending is not None:
            if left and pending.order > left[-1].order:
                yield left, right
                continue
            right.append(pending)
            pending = None
        for doc in dest:
            if left and doc.order > left[-1].order:
                pending = doc
                break
            right.append(doc)
        if not left and not right:
            return
        yield left, right
        if not left:
            return


def digest(docs: list[Doc], ignore_field_order: bool) -> bytes:
    hasher = hashlib.blake2b(digest_size=16)
    for doc in docs:
        hasher.update(canonical(doc.raw, ignore_field_order))
    return hasher.digest()


def compare_range(result: NamespaceResult, left: list[Doc], right: list[Doc], ignore_field_order: bool) -> None:
    """Merge the two sides of one range by `_id` and record each difference."""
    source_docs, dest_docs = iter(left), iter(right)
    s, d = next(source_docs, None), next(dest_docs, None)
    while s is not None or d is not None:
        if d is None or (s is not None and s.order < d.order):
            result.record(Difference(result.ns, s.id, "missing"))  # type: ignore[union-attr]
            s = next(source_docs, None)
            continue
        if s is None or d.order < s.order:
            result.record(Difference(result.ns, d.id, "extra"))
            d = next(dest_docs, None)
            continue
        result.compared += 1
        found = compare_documents(s.raw, d.raw, ignore_field_order)
        if found is None:
            result.equal += 1
        else:
            result.record(Difference(result.ns, s.id, "different", *found))
        s, d = next(source_docs, None), next(dest_docs, None)


def compare_documents(source: bytes, dest: bytes, ignore_field_order: bool) -> tuple[str, Any, Any] | None:
    if canonical(source, ignore_field_order) == canonical(dest, ignore_field_order):
        return None
    try:
        left = bson.decode(canonical(source, ignore_field_order), EXACT)
        right = bson.decode(canonical(dest, ignore_field_order), EXACT)
    except (bson.errors.InvalidBSON, ValueError):  # e.g. invalid UTF-8 in a string: the bytes differ, that is all
        return "(bytes)", len(source), len(dest)
    return first_difference(left, right) or ("(bytes)", len(source), len(dest))


