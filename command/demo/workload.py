"""A varied, reproducible write workload and a byte-exact comparison of two databases.
Used by the demo and by the end-to-end tests."""
from __future__ import annotations

import datetime as _dt
import random
from collections.abc import Callable

import bson
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo.database import Database

COLLECTIONS = ("users", "orders", "events")


def _value(rng: random.Random) -> object:
    choices: list[Callable[[], object]] = [
        lambda: rng.randint(-1000, 1000),
        lambda: Int64(rng.randint(-(2**40), 2**40)),
        lambda: rng.random() * 1000,
        lambda: Decimal128(f"{rng.randint(0, 10**6)}.{rng.randint(0, 99):02d}"),
        lambda: "".join(rng.choice("abcdefghij ÄÖüß€") for _ in range(rng.randint(0, 12))),
        lambda: rng.random() < 0.5,
        lambda: _dt.datetime(2020, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(milliseconds=rng.randint(0, 10**11)),
        lambda: None,
        lambda: Binary(rng.randbytes(rng.randint(0, 16))),
        lambda: Binary(rng.randbytes(16), 4),
        lambda: ObjectId(),
        lambda: Regex("^a.*b$", "i"),
        lambda: Timestamp(rng.randint(1, 2**31), rng.randint(0, 100)),
        lambda: MinKey(),
        lambda: MaxKey(),
        lambda: Code("function() { return 1; }"),
        lambda: {"nested": rng.randint(0, 9), "tags": [rng.randint(0, 5) for _ in range(rng.randint(0, 4))]},
        lambda: [rng.randint(0, 9) for _ in range(rng.randint(0, 6))],
    ]
    return rng.choice(choices)()


def _document(rng: random.Random, doc_id: object) -> dict[str, object]:
    document: dict[str, object] = {"_id": doc_id, "n": rng.randint(0, 100), "arr": [rng.randint(0, 9) for _ in range(4)]}
    for index in range(rng.randint(1, 6)):
        document[f"f{index}"] = _value(rng)
    document["profile"] = {"name": f"user{rng.randint(0, 999)}", "score": rng.random(), "tags": ["a", "b"]}
    return document


UPDATES: list[Callable[[random.Random], dict[str, object]]] = [
    lambda rng: {"$set": {"n": rng.randint(0, 100), "profile.score": rng.random()}},
    lambda rng: {"$set": {f"f{rng.randint(0, 8)}": _value(rng)}},
    lambda rng: {"$unset": {f"f{rng.randint(0, 5)}": ""}},
    lambda rng: {"$inc": {"n": rng.randint(1, 5)}},
    lambda rng: {"$push": {"arr": rng.randint(0, 9)}},
    lambda rng: {"$pull": {"arr": rng.randint(0, 9)}},
    lambda rng: {"$set": {"arr.1": rng.randint(100, 200)}},
    lambda rng: {"$set": {"arr.6": "padded"}},
    lambda rng: {"$pop": {"arr": 1}},
    lambda rng: {"$addToSet": {"profile.tags": rng.choice("abcxyz")}},
    lambda rng: {"$set": {"profile.address.city": rng.choice(["Oslo", "Lima", "Pune"])}},
    lambda rng: {"$rename": {"f0": "renamed"}},
]


class _Writer:
    """One workload's random writes, remembering which documents exist."""

    def __init__(self, db: Database, rng: random.Random, transactions: bool) -> None:
        self.db, self.rng, self.transactions = db, rng, transactions
        self.ids: dict[str, list[object]] = {name: [] for name in COLLECTIONS}
        self.next_id = 0

    def new_id(self) -> object:
        self.next_id += 1
        kind = self.next_id % 3
        return self.next_id if kind == 0 else ObjectId() if kind == 1 else f"key-{self.next_id}"

    def write(self) -> None:
        rng = self.rng
        name = rng.choice(COLLECTIONS)
        existing, roll = self.ids[name], rng.random()
        if not existing or roll < 0.30:
            self.insert(name, existing)
        elif self.transactions and roll < 0.33 and len(existing) >= 2:
            self.transaction(name, existing)
        elif roll < 0.90:
            self.update(name, rng.choice(existing))
        else:
            self.db[name].delete_one({"_id": existing.pop(rng.randrange(len(existing)))})

    def insert(self, name: str, existing: list[object]) -> None:
        rng, collection = self.rng, self.db[name]
        if rng.random() < 0.15:
            batch = [_document(rng, self.new_id()) for _ in range(rng.randint(2, 5))]
            collection.insert_many(batch)
            existing.extend(d["_id"] for d in batch)
        else:
            document = _document(rng, self.new_id())
            collection.insert_one(document)
            existing.append(document["_id"])

    def transaction(self, name: str, existing: list[object]) -> None:
        rng, collection = self.rng, self.db[name]
        with self.db.client.start_session() as session, session.start_transaction():
            first, second = rng.sample(existing, 2)
            collection.update_one({"_id": first}, {"$inc": {"n": 1}}, session=session)
            collection.update_one({"_id": second}, {"$set": {"txn": True}}, session=session)
            extra = _document(rng, self.new_id())
            collection.insert_one(extra, session=session)
        existing.append(extra["_id"])

    def update(self, name: str, target: object) -> None:
        rng, collection = self.rng, self.db[name]
        update = rng.choice(UPDATES)(rng)
        if rng.random() < 0.1:
            collection.replace_one({"_id": target}, {"replaced": True, "v": _value(rng), "arr": [1, 2]})
        else:
            collection.update_one({"_id": target}, update)


def run_workload(db: Database, operations: int, seed: int = 7, on_progress: Callable[[int], None] | None = None,
                 transactions: bool = True) -> int:
    """Apply `operations` writes spread over a few collections; returns how many were issued."""
    writer = _Writer(db, random.Random(seed), transactions)
    for issued in range(1, operations + 1):
        writer.write()
        if on_progress is not None and issued % 50 == 0:
            on_progress(issued)
    return operations


def _sorted_fields(value: object) -> object:
    if isinstance(value, dict):
        return {key: _sorted_fields(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_fields(item) for item in value]
    return value


def snapshot(db: Database, field_order: bool = True) -> dict[str, list[bytes]]:
    """Every user collection's documents as raw BSON, ordered by `_id`. With `field_order=False`, fields
    are sorted by name inside every document first (values and BSON types still compared exactly)."""
    raw = db.with_options(codec_options=CodecOptions(document_class=RawBSONDocument))
    result: dict[str, list[bytes]] = {}
    for name in sorted(db.list_collection_names()):
        if name.startswith("system."):
            continue
        documents = [document.raw for document in raw[name].find().sort("_id", 1)]
        if not field_order:
            options = CodecOptions(uuid_representation=UuidRepresentation.UNSPECIFIED)
            documents = [bson.encode(_sorted_fields(bson.decode(d, options)), codec_options=options) for d in documents]
        if documents:
            result[name] = documents
    return result


def differences(source: Database, destination: Database, limit: int = 5, field_order: bool = True) -> list[str]:
    """Human-readable differences between two databases; empty when they are equal byte for byte.

    SecantusDB, the embedded stand-in, logs updates in a change-stream-like dialect whose `updatedFields`
    does not keep the order in which an update appends new fields, so pipelines fed by it are compared
    with `field_order=False`. Field order itself is proven against mongod's diff format by the fixture tests."""
    left, right = snapshot(source, field_order), snapshot(destination, field_order)
    problems: list[str] = []
    for name in sorted(set(left) | set(right)):
        a, b = left.get(name, []), right.get(name, [])
        if a == b:
            continue
        problems.append(f"{destination.name}.{name}: source has {len(a)} documents, destination {len(b)}")
        a_set, b_set = set(a), set(b)
        for doc in [d for d in a if d not in b_set][:limit]:
            problems.append(f"  missing or different at destination: {_short(doc)}")
        for doc in [d for d in b if d not in a_set][:limit]:
            problems.append(f"  extra or different at destination: {_short(doc)}")
    return problems


def _short(raw: bytes) -> str:
    return repr(bson.decode(raw))[:300]
