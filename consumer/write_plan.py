"""Planning the writes of one run of one namespace, without touching the destination.

Given the run's events in order and the documents their updates touch as they stand, each event becomes a write
request: an insert (or, for events that converge, an insert-or-replace), a delete, or a replacement computed in
memory by applying the update to the document as it stands after the run's earlier events. That reproduces mongod's
update semantics exactly and shows whether the document existed: an update of a missing document is a conflict, an
upsert, or (converging) passed over."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import bson
from pymongo import DeleteOne, InsertOne, ReplaceOne, UpdateOne

from kafkashake.consumer.conflicts import UPDATE_MISSING, Conflict
from kafkashake.consumer.dead_letters import UNAPPLICABLE_UPDATE
from kafkashake.consumer.decoder import Event
from kafkashake.consumer.document_update import UpdateFormatError, apply_update, as_update_operators
from kafkashake.consumer.settings import ReplayPolicy
from kafkashake.schemas.codec import EVENT_CODEC_OPTIONS
from kafkashake.schemas.partitioning import key_text

# Documents for updates are read with `{_id: {$in: [...]}}`, which mongod answers with one _id index seek per value.
# A run's ids go in as few finds as fit well under the 16 MiB command limit (a large _id can be megabytes).
FETCH_MAX_IDS = 10_000
FETCH_MAX_ID_BYTES = 8 * 1024 * 1024

_ABSENT: Any = object()


@dataclass(slots=True)
class Write:
    event: Event
    document_id: Any
    key: str
    request: Any = None
    replaces_on_duplicate: bool = False
    tried_again: bool = False
    # A document's converging changes written at once (`collapse_converging`): its final state, the changes
    # before `event` applied with it.
    collapsed: bool = False
    along: list[Event] = field(default_factory=list)
    # The whole document a `ReplaceOne` writes: a collapsed window's final state, or a planned update's result.
    replacement: Any = None

    @classmethod
    def of(cls, event: Event) -> "Write":
        fields = event.fields
        document_id = fields["o2"]["_id"] if event.op == "u" else fields["o"]["_id"]
        return cls(event, document_id, key_text(document_id))


@dataclass
class Plan:
    writes: list[Write] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    # (event, reason, error) for updates that cannot be applied to their document
    unapplicable: list[tuple[Event, str, str]] = field(default_factory=list)
    passed_over: Counter = field(default_factory=Counter)


@dataclass(slots=True)
class Lane:
    """Writes of one namespace that go out as one ordered bulk write; `plan_ahead` plans what it can before then."""

    ns: str
    writes: list[Write]
    in_source_order: bool
    direct: list[Write] = field(default_factory=list)
    planned: "Plan | None" = None


def replace_whole(document_id: Any, document: Any, upsert: bool) -> ReplaceOne | UpdateOne:
    """The write of `document` whole over the one with this _id. MongoDB stores top-level field names starting
    with `$` but refuses them in a replacement (code 52), so such a document is written by an update pipeline
    replacing it with the document as a literal."""
    if has_dollar_named_field(document):
        return UpdateOne({"_id": document_id}, replacing_pipeline(document), upsert=upsert)
    return ReplaceOne({"_id": document_id}, document, upsert=upsert)


def has_dollar_named_field(document: Any) -> bool:
    return any(name.startswith("$") for name in document)


def replacing_pipeline(document: Any) -> list[dict[str, Any]]:
    return [{"$replaceWith": {"$literal": document}}]


def plan_ahead(lane: Lane, acknowledged: bool, policy: ReplayPolicy) -> None:
    """Plan what needs no read of the destination: direct updates (not for an unacknowledged write, which gives no
    matched count to tell a miss by, nor in source order), and the whole lane when none of its updates needs its
    document."""
    lane.direct = direct_updates(lane.writes, policy) if acknowledged and not lane.in_source_order else []
    if not ids_to_read(lane.writes):
        lane.planned = plan(lane.writes, {}, policy, lane.in_source_order)


def direct_updates(writes: list[Write], policy: ReplayPolicy) -> list[Write]:
    """The writes of documents whose every change in the run is an update mongod can apply from its diff alone
    (`as_update_operators`): each gets its `UpdateOne` here, needs no read of its document, and `plan` leaves it
    where it is. A direct update that matches nothing is found out afterwards (`Applier`). With --upsert every
    update is planned: an upsert builds the document from the update, which needs the planned path's semantics."""
    if policy.upsert:
        return []
    translated = [as_update_operators(w.event.fields["o"], w.event.fields.get("o_form"))
                  if w.event.op == "u" and not (w.event.converge or w.event.replayed) else None for w in writes]
    direct_keys: dict[str, bool] = {}
    for w, operators in zip(writes, translated):
        direct_keys[w.key] = direct_keys.get(w.key, True) and operators is not None
    direct = []
    for w, operators in zip(writes, translated):
        if direct_keys[w.key]:
            w.request = UpdateOne({"_id": w.document_id}, operators)
            direct.append(w)
    return direct


def ids_to_read(writes: list[Write]) -> list[Any]:
    """The `_id`s whose documents the run's updates need, each once (direct updates need none)."""
    return list({w.key: w.document_id for w in writes if w.event.op == "u" and w.request is None}.values())


def plan(writes: list[Write], documents: dict[str, Any], policy: ReplayPolicy,
         collapse_converging: bool = False) -> Plan:
    """Write requests for `writes` (in order), given the current documents by `key_text` of their `_id`. Writes
    that already have their request (`direct_updates`) keep it and their place. With `collapse_converging` (a
    collection with a unique index), the writes up to the last converging one are collapsed first."""
    result = Plan()
    state = dict(documents)
    window = max((i + 1 for i, w in enumerate(writes) if w.event.converge or w.event.replayed),
                 default=0) if collapse_converging else 0
    if window:
        collapse_converging_writes(writes[:window], state, result)
        writes = writes[window:]
    for w in writes:
        if w.request is not None:
            result.writes.append(w)
            continue
        op, converges = w.event.op, w.event.converge or w.event.replayed
        if op == "i":
            if converges:
                w.request = replace_whole(w.document_id, w.event.fields["o"], upsert=True)
                state[w.key] = w.event.fields["o"]
            else:
                w.request = InsertOne(w.event.fields["o"])
                w.replaces_on_duplicate = policy.insert_on_dup_update
        elif op == "d":
            w.request = DeleteOne({"_id": w.document_id})
            state[w.key] = _ABSENT
        else:
            _plan_update(w, state, policy, result)
        if w.request is not None:
            result.writes.append(w)
    return result


def collapse_converging_writes(window: list[Write], state: dict[str, Any], result: Plan) -> None:
    """Converging changes (read again after a crash, or overlapping a copy) of a collection with a unique index,
    written as each document's final state: the destination may hold any later state of them, and replaying
    them one by one could refuse a value another document holds there only until a later change of the window
    moves it (the applier then writes the window's final states still to come together, duplicate_keys). Deletes
    go first."""
    applied: dict[str, list[Write]] = {}
    for w in window:
        if w.event.op == "i":
            state[w.key] = w.event.fields["o"]
        elif w.event.op == "d":
            state[w.key] = _ABSENT
        elif state.get(w.key, _ABSENT) is _ABSENT:
            _pass_over_missing(w, result)
            continue
        elif not _apply_in_memory(w, state[w.key], state, result):
            continue
        applied.setdefault(w.key, []).append(w)
    finals = []
    for key, changes in applied.items():
        last = changes[-1]
        final = Write(last.event, last.document_id, key, collapsed=True, along=[w.event for w in changes[:-1]])
        if state[key] is _ABSENT:
            final.request = DeleteOne({"_id": last.document_id})
        else:
            final.replacement = state[key]
            final.request = replace_whole(last.document_id, final.replacement, upsert=True)
        finals.append(final)
    result.writes += sorted(finals, key=lambda w: not isinstance(w.request, DeleteOne))


def _plan_update(w: Write, state: dict[str, Any], policy: ReplayPolicy, result: Plan) -> None:
    current = state.get(w.key, _ABSENT)
    if current is _ABSENT:
        if w.event.converge or w.event.replayed:
            _pass_over_missing(w, result)
            return
        if not policy.upsert:
            result.conflicts.append(Conflict(UPDATE_MISSING, w.event, None, "no document matches the update's _id"))
            return
        current = dict(w.event.fields["o2"])  # what an upsert of this update would start from
    if _apply_in_memory(w, current, state, result):
        w.replacement = state[w.key]
        w.request = replace_whole(w.document_id, w.replacement, upsert=policy.upsert)


def _pass_over_missing(w: Write, result: Plan) -> None:
    """A converging update of a document deleted before the copy read it (or by a later change applied before a
    restart): its delete follows."""
    result.passed_over["snapshot_overlap" if w.event.converge else "replayed"] += 1


def _apply_in_memory(w: Write, current: Any, state: dict[str, Any], result: Plan) -> bool:
    """`w`'s update applied to `current` becomes the document's state; False (reported unapplicable) if it cannot
    be applied."""
    try:
        state[w.key] = apply_update(current, w.event.fields["o"], w.event.fields.get("o_form"))
    except UpdateFormatError as exc:
        result.unapplicable.append((w.event, UNAPPLICABLE_UPDATE, f"cannot apply the update: {exc}"))
        return False
    return True


def id_chunks(ids: list[Any]) -> list[list[Any]]:
    """`ids` in order, cut into lists of at most FETCH_MAX_IDS values and FETCH_MAX_ID_BYTES of BSON."""
    chunks: list[list[Any]] = [[]]
    size = 0
    for document_id in ids:
        id_size = len(bson.encode({"_id": document_id}, codec_options=EVENT_CODEC_OPTIONS))
        if chunks[-1] and (len(chunks[-1]) == FETCH_MAX_IDS or size + id_size > FETCH_MAX_ID_BYTES):
            chunks.append([])
            size = 0
        chunks[-1].append(document_id)
        size += id_size
    return chunks if chunks[0] else []
