"""Final states of a replayed window on a collection with a unique index, written together when one of them is
refused for a value another document of the window still holds (write_plan.collapse_converging_writes).

The documents are deleted and their final states inserted in one transaction: the window's final states are a
state the source had, so they fit each other, and no crash or error in between can leave one of the documents
deleted (its window may hold only updates, which cannot bring it back)."""
from __future__ import annotations

from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from kafkashake.runtime.retry import is_transient

def rewrite_together(client: MongoClient, collection: Collection, ids: list[Any], documents: list[Any]) -> bool:
    """Delete the documents with `ids` and insert `documents` (their final states; those deleted at the end are
    left out) atomically. False if the destination refused (a value held by a document outside the window, or no
    transactions): nothing of it is written then."""

    def rewrite(session) -> None:  # type: ignore[no-untyped-def]
        collection.delete_many({"_id": {"$in": ids}}, session=session)
        if documents:
            collection.insert_many(documents, ordered=True, session=session)

    try:
        with client.start_session() as session:
            session.with_transaction(rewrite)
    except OperationFailure as exc:
        if is_transient(exc):
            raise
        return False
    return True
