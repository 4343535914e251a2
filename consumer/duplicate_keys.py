"""What becomes of a write a unique index refused.

- `--insert-on-dup-update`: an insert refused on `_id` replaces the existing document.
- A final state of a replayed or copy-overlapping window (write_plan.collapse_converging_writes) refused for a value
  another document of the window still holds: the window's final states still to come are written together, in one
  transaction (`rewrite_together`). The window's final states are a state the source had, so they fit each other,
  and no crash or error in between can leave one of the documents deleted (its window may hold only updates, which
  cannot bring it back).
- Refused on another unique index than `_id`: tried again after the writes that may free its value (the others of
  its source time, as a transaction's changes may come in another order than the source applied them, or of its
  window).
- A window's final state refused again: left to the document's next change in the batch if it has one, else parked
  while the window may go on in a later batch (consumer/parked.py).
- Anything else is a conflict: the destination is left as it is."""
from __future__ import annotations

import logging
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, OperationFailure

from kafkashake.consumer.apply_report import ApplyReport, where_in_kafka
from kafkashake.consumer.conflicts import DUPLICATE_KEY, Conflict, duplicate_index_name
from kafkashake.consumer.parked import ParkedWrites
from kafkashake.consumer.write_plan import Write, has_dollar_named_field, replace_whole, replacing_pipeline
from kafkashake.runtime.retry import is_transient

log = logging.getLogger("kafkashake.consumer.applier")
ID_INDEX = "_id_"


class DuplicateKeys:
    def __init__(self, client: MongoClient, parked: ParkedWrites) -> None:
        self._client = client
        self._parked = parked

    def handle(self, collection: Collection, write: Write, error: dict, rest: list[Write],
               report: ApplyReport) -> list[Write]:
        """Deal with `write`'s refusal (`error`, from the bulk write); returns the writes still to do."""
        index_name = duplicate_index_name(error)
        if index_name == ID_INDEX:
            if write.replaces_on_duplicate:
                self._replace_existing(collection, write, report)
            else:
                report.conflicts.append(_conflict(write, error, index_name))
            return rest
        if write.collapsed and (left := self._rewrite_window(collection, write, rest, report)) is not None:
            return left
        ts = write.event.fields.get("ts")
        freeing = [i for i, later in enumerate(rest)
                   if (later.collapsed if write.collapsed else later.event.fields.get("ts") == ts)]
        if freeing and not write.tried_again:
            write.tried_again = True
            # after those; its document's own later changes among them go with it
            window, after = rest[: freeing[-1] + 1], rest[freeing[-1] + 1:]
            along = [later for later in window if later.key == write.key]
            return [later for later in window if later.key != write.key] + [write] + along + after
        own_later = next((later for later in rest if later.key == write.key), None)
        if write.collapsed and own_later is not None:
            _fold_into(write, own_later)
        elif write.collapsed and all(later.collapsed for later in rest) and self._parked.may_park(write.event):
            if self._parked.park(collection.full_name, write.key, [*write.along, write.event]):
                log.warning("a converging change waits for a later one to free a unique value: its document is not in "
                            "the destination until then (written again with each batch; kafkashake_consumer_parked_"
                            "changes counts them)", extra={"ns": collection.full_name, "index": index_name,
                                                           "kafka": where_in_kafka(write.event)})
        else:
            report.conflicts.append(_conflict(write, error, index_name))
        return rest

    def _rewrite_window(self, collection: Collection, write: Write, rest: list[Write],
                        report: ApplyReport) -> list[Write] | None:
        """The refused final state and the window's others still to write, written together; the writes left."""
        together = [write] + [w for w in rest if w.collapsed]
        if not rewrite_together(self._client, collection, [w.document_id for w in together],
                                [w.replacement for w in together if w.replacement is not None]):
            return None
        report.written(together)
        return [w for w in rest if not w.collapsed]

    @staticmethod
    def _replace_existing(collection: Collection, write: Write, report: ApplyReport) -> None:
        """insert_on_dup_update: the inserted document replaces the existing one whole (MongoShake merged with
        $set, so fields the insert did not have survived). A duplicate on another unique index stays a conflict."""
        document = write.event.fields["o"]
        try:
            if has_dollar_named_field(document):
                collection.update_one({"_id": write.document_id}, replacing_pipeline(document))
            else:
                collection.replace_one({"_id": write.document_id}, document)
        except DuplicateKeyError as exc:
            details = exc.details or {}
            report.conflicts.append(Conflict(DUPLICATE_KEY, write.event, exc.code, str(details.get("errmsg", exc)),
                                             duplicate_index_name(details)))
            return
        report.written([write])


def _fold_into(refused: Write, later: Write) -> None:
    """A window's refused final state is left to the document's next change in the batch, which writes its whole
    state (creating the document if need be) or deletes it: the value may be free by then, the document having
    moved on (a replayed window ends at another time in each partition)."""
    later.along = [*refused.along, refused.event, *later.along]
    if later.replacement is not None:  # set only where the request writes it whole
        later.request = replace_whole(later.document_id, later.replacement, upsert=True)


def _conflict(write: Write, error: dict, index_name: str | None) -> Conflict:
    return Conflict(DUPLICATE_KEY, write.event, error.get("code"), error.get("errmsg", ""), index_name)


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
