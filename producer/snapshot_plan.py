"""Planning an initial copy: which collections, with which options and indexes, split into which `_id` ranges.

Ranges are read with the `_id` index's bounds (`min`/`max` with a hint) rather than `$gte`/`$lt`, because
query comparisons only match values of the same BSON type and would miss documents whose `_id` types differ
from the boundaries'. Boundaries come from a server-side sorted `$sample`, so splitting costs one small query."""
from __future__ import annotations

import logging
import math
from typing import Any

from bson.max_key import MaxKey
from bson.min_key import MinKey
from pymongo import MongoClient

from kafkashake.oplog.entry import is_internal_namespace
from kafkashake.oplog.namespaces import NamespaceFilter
from kafkashake.producer.snapshot_state import CollectionState, RangeState

log = logging.getLogger("kafkashake.producer.snapshot")

SAMPLES_PER_RANGE = 20
MAX_SAMPLES = 100_000
# Fields of a listIndexes spec that describe the server's copy, not the index.
INDEX_SPEC_INTERNAL = frozenset({"ns", "entryFormat"})


def list_collections(client: MongoClient, namespaces: NamespaceFilter,
                     private_databases: frozenset[str]) -> list[CollectionState]:
    """Every collection and view the copy covers, in a stable order, with options and indexes (not `_id_`)."""
    planned: list[CollectionState] = []
    for db_name in sorted(client.list_database_names()):
        database = client[db_name]
        for info in sorted(database.list_collections(), key=lambda info: info["name"]):
            ns = f"{db_name}.{info['name']}"
            if is_internal_namespace(ns, private_databases) or not namespaces.allows(ns):
                continue
            kind = info.get("type", "collection")
            if kind not in ("collection", "view"):
                log.warning("not copied: only collections and views are", extra={"ns": ns, "type": kind})
                continue
            indexes = [] if kind == "view" else [
                {k: v for k, v in spec.items() if k not in INDEX_SPEC_INTERNAL}
                for spec in database[info["name"]].list_indexes() if spec["name"] != "_id_"
            ]
            planned.append(CollectionState(ns, kind, dict(info.get("options") or {}), indexes))
    return planned


def split(client: MongoClient, collection: CollectionState, split_documents: int) -> None:
    """Fill in the estimated size and the `_id` ranges (one for a small collection, none for a view: a view's
    `create` is copied, and it shows the destination's data)."""
    if collection.kind == "view":
        collection.ranges = []
        return
    source = client[collection.db][collection.name]
    collection.estimated = source.estimated_document_count()
    wanted = math.ceil(collection.estimated / split_documents) if split_documents > 0 else 1
    boundaries = _boundaries(source, wanted) if wanted > 1 else []
    lowers: list[Any] = [MinKey(), *boundaries]
    uppers: list[Any] = [*boundaries, MaxKey()]
    collection.ranges = [RangeState(lower, upper) for lower, upper in zip(lowers, uppers)]


def _boundaries(source: Any, ranges: int) -> list[Any]:
    size = min(ranges * SAMPLES_PER_RANGE, MAX_SAMPLES)
    sampled = [document["_id"] for document in source.aggregate(
        [{"$sample": {"size": size}}, {"$project": {"_id": 1}}, {"$sort": {"_id": 1}}])]
    step = len(sampled) / ranges
    boundaries: list[Any] = []
    for i in range(1, ranges):
        candidate = sampled[int(i * step)] if sampled else None
        if sampled and (not boundaries or _distinct(boundaries[-1], candidate)):
            boundaries.append(candidate)
    return boundaries


def _distinct(left: Any, right: Any) -> bool:
    return type(left) is not type(right) or left != right
