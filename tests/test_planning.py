"""Unit tests of the stages between the servers: the producer's acknowledgement tracker, the consumer's write
planning, the copy-overlap marking and how update reads are cut into finds. No servers."""
from __future__ import annotations

import bson
from bson import Int64, Timestamp
from pymongo import DeleteOne, InsertOne, MongoClient, ReplaceOne, UpdateOne

from kafkashake.consumer import write_plan
from kafkashake.consumer.applier import Applier
from kafkashake.consumer.conflicts import UPDATE_MISSING
from kafkashake.consumer.dead_letters import UNAPPLICABLE_UPDATE
from kafkashake.consumer.decoder import Event
from kafkashake.consumer.gates import CopyOverlap
from kafkashake.consumer.intake import Received
from kafkashake.consumer.settings import ReplayPolicy
from kafkashake.consumer.write_lanes import FixedLanes, LaneTuner
from kafkashake.consumer.write_plan import Write, ids_to_read, plan
from kafkashake.producer.acknowledgements import AckQueue
from kafkashake.schemas import snapshot
from kafkashake.schemas.partitioning import key_text


# ------------------------------------------------------------------------------------------ acknowledgements


def test_ack_queue_settles_only_a_fully_acknowledged_prefix() -> None:
    queue: AckQueue[str] = AckQueue()
    first, second, third = queue.add("a", expected=2), queue.add("b"), queue.add("c", expected=0)
    second.acknowledge()
    assert queue.settle() == [] and queue.oldest() == "a"
    first.acknowledge()
    assert queue.settle() == []
    first.acknowledge()
    assert queue.settle() == ["a", "b", "c"] and len(queue) == 0 and queue.oldest() is None
    assert third.remaining == 0


def test_ack_queue_holds_later_values_behind_an_unacknowledged_one() -> None:
    queue: AckQueue[int] = AckQueue()
    slots = [queue.add(n) for n in range(5)]
    for slot in slots[1:]:
        slot.acknowledge()
    assert queue.settle() == [] and len(queue) == 5
    slots[0].acknowledge()
    assert queue.settle() == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------------------ write planning


def _event(op: str, document_id: object, offset: int, o: dict | None = None, **flags: bool) -> Event:
    fields: dict = {"op": op, "ns": "db.c", "ts": Timestamp(100, offset)}
    if op == "u":
        fields.update(o2={"_id": document_id}, o=o or {"$v": 2, "diff": {"u": {"n": offset}}})
    else:
        fields["o"] = o if o is not None else {"_id": document_id, "n": offset}
    event = Event(fields, "t", 0, offset)
    event.converge = flags.get("converge", False)
    event.replayed = flags.get("replayed", False)
    return event


def _writes(*events: Event) -> list[Write]:
    return [Write.of(event) for event in events]


def test_updates_are_applied_in_memory_in_order_over_the_documents_read() -> None:
    writes = _writes(_event("u", 1, 1), _event("u", 1, 2), _event("u", Int64(2), 3))
    assert ids_to_read(writes) == [1, Int64(2)]
    current = {key_text(1): {"_id": 1, "n": 0, "keep": True}, key_text(2): {"_id": 2, "n": 0}}
    result = plan(writes, current, ReplayPolicy())
    requests = [w.request for w in result.writes]
    assert requests == [ReplaceOne({"_id": 1}, {"_id": 1, "n": 1, "keep": True}, upsert=False),
                        ReplaceOne({"_id": 1}, {"_id": 1, "n": 2, "keep": True}, upsert=False),
                        ReplaceOne({"_id": Int64(2)}, {"_id": 2, "n": 3}, upsert=False)]
    assert current[key_text(1)]["n"] == 0, "the documents read are not modified"
    assert not result.conflicts and not result.unapplicable


def test_an_update_of_a_missing_document_is_a_conflict_an_upsert_or_passed_over() -> None:
    missing = _writes(_event("u", "x", 1))
    assert plan(missing, {}, ReplayPolicy()).conflicts[0].kind == UPDATE_MISSING
    upserted = plan(_writes(_event("u", "x", 1)), {}, ReplayPolicy(upsert=True))
    assert upserted.writes[0].request == ReplaceOne({"_id": "x"}, {"_id": "x", "n": 1}, upsert=True)
    converging = plan(_writes(_event("u", "x", 1, converge=True)), {}, ReplayPolicy())
    replayed = plan(_writes(_event("u", "x", 1, replayed=True)), {}, ReplayPolicy())
    assert not converging.writes and converging.passed_over == {"snapshot_overlap": 1}
    assert not replayed.writes and replayed.passed_over == {"replayed": 1}


def test_a_delete_in_the_run_makes_a_later_update_miss() -> None:
    writes = _writes(_event("d", 1, 1), _event("u", 1, 2))
    result = plan(writes, {key_text(1): {"_id": 1, "n": 0}}, ReplayPolicy())
    assert [w.request for w in result.writes] == [DeleteOne({"_id": 1})]
    assert [c.kind for c in result.conflicts] == [UPDATE_MISSING]


def test_inserts_converge_only_when_marked_and_may_replace_on_duplicate() -> None:
    plain, converging = plan(_writes(_event("i", 1, 1), _event("i", 2, 2, converge=True)), {},
                             ReplayPolicy(insert_on_dup_update=True)).writes
    assert plain.request == InsertOne({"_id": 1, "n": 1}) and plain.replaces_on_duplicate
    assert converging.request == ReplaceOne({"_id": 2}, {"_id": 2, "n": 2}, upsert=True)


def test_an_update_that_cannot_apply_to_its_document_is_reported_for_the_dead_letter_topic() -> None:
    bad = _event("u", 1, 1, o={"$v": 2, "diff": {"x": {"a": 1}}})
    result = plan(_writes(bad), {key_text(1): {"_id": 1, "a": "not an array"}}, ReplayPolicy())
    assert not result.writes
    assert [(event.offset, reason) for event, reason, _ in result.unapplicable] == [(1, UNAPPLICABLE_UPDATE)]


def test_a_batch_is_planned_ahead_up_to_its_first_ddl_without_reading_the_destination() -> None:
    """What `Applier.prepare` does while the previous batch is written: lanes, and every request that needs no read
    of a document; what needs one, and every run after a DDL (which may change the indexes), waits for the write."""
    never_contacted = MongoClient("mongodb://127.0.0.1:9", connect=False)
    looked_up: list[str] = []
    applier = Applier(never_contacted, frozenset(), ReplayPolicy(ddl=True),
                      has_unique_index=lambda ns: looked_up.append(ns) is None and False, lanes=FixedLanes(2))
    inserts = [_event("i", n, n) for n in range(8)]
    direct = [_event("u", n, 10 + n) for n in range(4)]
    needs_read = _event("u", 100, 20, {"$v": 2, "diff": {"sub": {"i": {"x": 1}}}})
    ddl = Event({"op": "c", "ns": "db.$cmd", "ts": Timestamp(100, 30), "o": {"drop": "c"}}, "t", 0, 30)
    after = [_event("i", n, 40 + n) for n in range(200, 204)]
    first, updates, command, last = applier.prepare(inserts + direct + [needs_read, ddl] + after).steps
    assert all(lane.planned is not None for lane in first.lanes)
    assert sorted(type(w.request).__name__ for lane in first.lanes for w in lane.writes) == ["InsertOne"] * 8
    for lane in updates.lanes:
        reads = [w.document_id for w in lane.writes if w.request is None]
        assert reads == ([100] if needs_read in [w.event for w in lane.writes] else [])
        assert (lane.planned is None) == bool(reads)
    assert sum(isinstance(w.request, UpdateOne) for lane in updates.lanes for w in lane.writes) == 4
    assert command is ddl and last.lanes is None and looked_up == ["db.c", "db.c"]


def test_update_reads_are_cut_by_count_and_by_size() -> None:
    assert write_plan.id_chunks([]) == []
    many = list(range(write_plan.FETCH_MAX_IDS * 2 + 1))
    assert [len(chunk) for chunk in write_plan.id_chunks(many)] == [write_plan.FETCH_MAX_IDS] * 2 + [1]
    large = ["x" * (3 * 1024 * 1024)] * 5
    chunks = write_plan.id_chunks(large)
    assert [len(chunk) for chunk in chunks] == [2, 2, 1]
    assert all(sum(len(bson.encode({"_id": i})) for i in chunk) <= write_plan.FETCH_MAX_ID_BYTES for chunk in chunks)


# ------------------------------------------------------------------------------------------ copy overlap


def test_changes_up_to_the_copys_end_converge_and_later_ones_do_not() -> None:
    overlap = CopyOverlap()
    copied = _event("i", 1, 1, o={"_id": 1})
    copied.fields[snapshot.FIELD] = True
    during = _event("u", 1, 5)
    after = _event("u", 1, 9)
    overlap.mark(_received([copied]))
    overlap.until[("t", 0)] = Timestamp(100, 5)
    overlap.mark(_received([during, after]))
    assert [copied.converge, during.converge, after.converge] == [True, True, False]


def _received(events: list[Event]) -> Received:
    return Received("t", 0, 0, 0, None, None, [], {}, events)


def _tuned(tuner: LaneTuner, seconds_per_write: dict[int, float], batches: int) -> list[int]:
    """Batches of 1,000 timed writes, each prepared before the previous one is written (as the applier does)."""
    used, ahead = [], []
    for _ in range(batches):
        ahead.append(tuner.draw())
        if len(ahead) == 2:
            lanes = ahead.pop(0)
            tuner.record(lanes, 1_000, 1_000 * seconds_per_write[lanes])
            used.append(lanes)
    return used


def test_the_lane_count_is_the_one_whose_batches_were_written_fastest_and_follows_the_destination() -> None:
    shown: list[int] = []
    tuner = LaneTuner(shown.append)
    serialising = {1: 0.001, 2: 0.0012, 4: 0.0014, 8: 0.0016}
    used = _tuned(tuner, serialising, 60)
    assert tuner.chosen == 1 and shown == [4, 1]
    assert sorted(set(used[:6])) == [1, 2] and set(used[8:46]) == {1}  # one run is planned ahead
    parallel = {1: 0.004, 2: 0.002, 4: 0.001, 8: 0.0012}
    _tuned(tuner, parallel, 400)
    assert tuner.chosen == 4 and shown[-1] == 4


def test_small_batches_are_not_measured_and_a_count_no_faster_than_the_one_below_is_not_taken() -> None:
    tuner = LaneTuner()
    assert tuner.chosen == 4
    tuner.record(1, 10, 1.0)
    tuner.record(1, 10, 1.0)
    used = _tuned(tuner, {1: 0.00098, 2: 0.001, 4: 0.00099, 8: 0.00101}, 200)
    assert tuner.chosen == 1 and set(used) == {1, 2}


def test_a_probe_ends_when_prepared_batches_are_prepared_again_and_never_written() -> None:
    """With parked events every batch prepared ahead is prepared again by the writer: every other draw is dropped."""
    tuner = LaneTuner()
    serialising = {1: 0.001, 2: 0.0012, 4: 0.0014, 8: 0.0016}
    for _ in range(40):
        tuner.draw()
        lanes = tuner.draw()
        tuner.record(lanes, 1_000, 1_000 * serialising[lanes])
    assert tuner.chosen == 1


def test_one_slow_batch_does_not_choose_the_lane_count() -> None:
    tuner = LaneTuner()
    seconds = {1: 0.85, 2: 1.0, 4: 1.1, 8: 1.2}
    ones = 0
    for _ in range(14):
        lanes = tuner.draw()
        ones += lanes == 1
        tuner.record(lanes, 1_000, seconds[lanes] * (3 if lanes == ones == 1 else 1))  # the first batch in one lane
    assert tuner.chosen == 1


def test_the_lane_count_climbs_the_ladder_while_the_next_count_is_faster() -> None:
    tuner = LaneTuner()
    used = _tuned(tuner, {1: 0.004, 2: 0.002, 4: 0.0011, 8: 0.001}, 30)
    assert tuner.chosen == 8 and used[:18].count(8) == 3 and set(used[20:]) == {8}


def test_the_lane_count_steps_down_when_the_destination_begins_to_serialise_writes() -> None:
    tuner = LaneTuner()
    _tuned(tuner, {1: 0.004, 2: 0.002, 4: 0.001, 8: 0.0012}, 60)
    assert tuner.chosen == 4
    _tuned(tuner, {1: 0.001, 2: 0.0012, 4: 0.0014, 8: 0.0016}, 400)
    assert tuner.chosen == 1
