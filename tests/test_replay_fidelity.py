"""Replay fidelity against a running server: every mongod diff case and every real oplog entry goes through
the consumer's real decode and write path."""
from __future__ import annotations

import bson
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

import pytest

from pymongo import MongoClient

from conftest import client, load_fixture_lines, unique, wait_until
from kafkashake.demo.embedded import mongo_uri
from kafkashake.consumer.applier import Applier
from kafkashake.consumer.write_lanes import FixedLanes
from kafkashake.consumer.document_update import as_update_operators
from kafkashake.consumer.sequencer import UniqueIndexes
from kafkashake.consumer.duplicate_keys import rewrite_together
from kafkashake.consumer.decoder import Event, decode_message

EXACT = CodecOptions(uuid_representation=UuidRepresentation.UNSPECIFIED)
RAW = CodecOptions(document_class=RawBSONDocument, uuid_representation=UuidRepresentation.UNSPECIFIED)


def as_message(event: dict) -> bytes:
    return bson.encode(event, codec_options=EXACT)


@pytest.mark.parametrize("written_as", ["replacements", "update operators where they are exact"])
def test_every_diff_case_through_the_write_path(shared_mongo, written_as: str) -> None:
    cases = load_fixture_lines("diff_cases.jsonl")
    mongo = client(shared_mongo)
    db_name = unique("diffcases")
    collection = mongo[db_name].get_collection("cases", codec_options=EXACT)
    for number, case in enumerate(cases):
        collection.insert_one({"_id": number, **case["before"]})
    # The consumer reads documents and writes replacements for collections with a unique index; else it has mongod
    # apply the diffs it can express as $set/$unset itself.
    direct = written_as != "replacements"
    applier = Applier(mongo, frozenset(), has_unique_index=lambda ns: not direct)
    if direct:
        assert sum(as_update_operators(case["oplog_o"]) is not None for case in cases) >= 10
    events = []
    for number, case in enumerate(cases):
        update = {"ts": Timestamp(1, number + 1), "op": "u", "ns": f"{db_name}.cases", "o": case["oplog_o"],
                  "o2": {"_id": number}}
        events.extend(decode_message(as_message(update), "t", 0, number))
    report = applier.apply(events)
    assert not report.conflicts
    assert report.applied["u"] == len(cases)
    stored = {doc["_id"]: doc for doc in mongo[db_name].get_collection("cases", codec_options=RAW).find()}
    mismatches = []
    for number, case in enumerate(cases):
        expected = bson.encode({"_id": number, **case["after"]}, codec_options=EXACT)
        if stored[number].raw != expected:
            mismatches.append(f"{case['_fixture']['case']}: got {stored[number]} expected {case['after']}")
    assert not mismatches, "\n".join(mismatches)


def test_every_real_oplog_entry_is_applied_or_passed_over(shared_mongo) -> None:
    entries = load_fixture_lines("oplog_entries.jsonl")
    mongo = client(shared_mongo)
    prefix = unique("fx").replace("-", "_")
    applier = Applier(mongo, frozenset({"kafkashake"}))
    applied = passed = conflicts = 0
    for offset, entry in enumerate(entries):
        entry.pop("_fixture")
        if entry.get("ns") and not entry["ns"].startswith(("admin.", "config.", "local.")):
            entry["ns"] = f"{prefix}{entry['ns']}"  # keep fixture writes in databases of their own
        for inner in entry.get("o", {}).get("applyOps", []) if isinstance(entry.get("o"), dict) else []:
            if not inner["ns"].startswith(("admin.", "config.")):
                inner["ns"] = f"{prefix}{inner['ns']}"
        events = decode_message(as_message(entry), "fixtures", 0, offset)
        report = applier.apply(events)
        applied += sum(report.applied.values())
        passed += sum(report.passed_over.values())
        conflicts += len(report.conflicts)
    assert applied > 20 and passed > 20
    assert applied + passed + conflicts >= len(entries)
    zz = list(mongo[f"{prefix}zz"]["test"].find())
    assert len(zz) == 1 and zz[0]["kick"] == 1.0, "insert applied; update and delete of other _ids are conflicts/no-ops"
    assert mongo[f"{prefix}txntest"]["c"].find_one({"_id": 0}) == {"_id": 0, "x": 1}


def test_every_real_ddl_entry_applies_with_ddl(shared_mongo) -> None:
    from kafkashake.consumer.applier import ReplayPolicy

    entries = [e for e in load_fixture_lines("oplog_entries.jsonl") if e["op"] == "c" and "applyOps" not in e["o"]]
    mongo = client(shared_mongo)
    prefix = unique("ddl").replace("-", "_")
    applier = Applier(mongo, frozenset({"kafkashake"}), policy=ReplayPolicy(ddl=True))
    applied = passed = 0
    for offset, entry in enumerate(entries):
        entry.pop("_fixture")
        if entry["ns"].startswith("admin."):
            continue
        entry["ns"] = f"{prefix}{entry['ns']}"
        command = entry["o"]
        if "renameCollection" in command:
            command["renameCollection"], command["to"] = f"{prefix}{command['renameCollection']}", f"{prefix}{command['to']}"
        report = applier.apply(decode_message(as_message(entry), "fixtures", 0, offset))
        applied += report.applied["c"]
        passed += sum(report.passed_over.values())
    assert applied >= 15 and applied + passed >= 20
    indexes = mongo[f"{prefix}commit_index"]["test"].index_information() if "test" in mongo[f"{prefix}commit_index"].list_collection_names() else {}
    assert all("entryFormat" not in spec and "ns" not in spec for spec in indexes.values())


def test_updates_mongod_applies_itself_still_report_each_missing_document(shared_mongo) -> None:
    mongo = client(shared_mongo)
    db_name = unique("direct")
    collection = mongo[db_name].get_collection("c", codec_options=EXACT)
    collection.insert_many([{"_id": 1, "n": 0}, {"_id": 2, "n": 0}, {"_id": 3, "n": 0}])
    applier = Applier(mongo, frozenset(), has_unique_index=lambda ns: False)

    def change(number: int, op: str, o: dict, o2: dict | None = None) -> dict:
        return {"ts": Timestamp(2, number), "op": op, "ns": f"{db_name}.c", "o": o, **({"o2": o2} if o2 else {})}

    def set_n(value: int) -> dict:
        return {"$v": 2, "diff": {"u": {"n": value}}}

    changes = [change(1, "u", set_n(1), {"_id": 1}), change(2, "u", set_n(1), {"_id": 99}),
               change(3, "u", set_n(1), {"_id": 2}), change(4, "u", set_n(2), {"_id": 2}),
               change(5, "d", {"_id": 3}), change(6, "u", set_n(1), {"_id": 3}),
               change(7, "u", set_n(1), {"_id": 98}), change(8, "i", {"_id": 4, "n": 0}),
               change(9, "u", set_n(7), {"_id": 4})]
    events = [event for offset, c in enumerate(changes) for event in decode_message(as_message(c), "t", 0, offset)]
    report = applier.apply(events)
    assert sorted(conflict.event.fields["o2"]["_id"] for conflict in report.conflicts) == [3, 98, 99]
    assert report.applied == {"u": 4, "d": 1, "i": 1}
    assert list(collection.find(sort=[("_id", 1)])) == [{"_id": 1, "n": 1}, {"_id": 2, "n": 2}, {"_id": 4, "n": 7}]


def test_direct_updates_keep_source_order_with_other_writes_across_lanes_and_unacknowledged(shared_mongo) -> None:
    mongo = client(shared_mongo)
    db_name = unique("lanes")
    collection = mongo[db_name].get_collection("c", codec_options=EXACT)
    collection.create_index("email", unique=True)  # which the applier is not told of: a stale index list
    collection.insert_many([{"_id": n, "email": f"e{n}"} for n in range(0, 40, 2)])

    def change(number: int, op: str, o: dict, o2: dict | None = None) -> dict:
        return {"ts": Timestamp(3, number), "op": op, "ns": f"{db_name}.c", "o": o, **({"o2": o2} if o2 else {})}

    # e0 moves from document 0 to a new document 1 in one run: in source order, the insert never collides
    def events_of(changes: list[dict], first_offset: int) -> list:
        return [event for offset, c in enumerate(changes, first_offset)
                for event in decode_message(as_message(c), "t", 0, offset)]

    applier = Applier(mongo, frozenset(), has_unique_index=lambda ns: False)
    moved = applier.apply(events_of([change(1, "u", {"$v": 2, "diff": {"u": {"email": "moved"}}}, {"_id": 0}),
                                     change(2, "i", {"_id": 1, "email": "e0"})], 0))
    assert not moved.conflicts and moved.applied == {"u": 1, "i": 1}
    assert collection.find_one({"_id": 1}) == {"_id": 1, "email": "e0"}

    # 38 updates spread over the lanes; the odd-numbered documents do not exist
    report = applier.apply(events_of([change(10 + n, "u", {"$v": 2, "diff": {"u": {"n": n}}}, {"_id": n})
                                      for n in range(2, 40)], 10))
    assert sorted(c.event.fields["o2"]["_id"] for c in report.conflicts) == list(range(3, 40, 2))
    assert report.applied == {"u": 19}
    assert collection.count_documents({"n": {"$exists": True}}) == 19

    unacknowledged = MongoClient(mongo_uri(shared_mongo), w=0)
    events = events_of([change(50, "u", {"$v": 2, "diff": {"u": {"w0": True}}}, {"_id": 2}),
                        change(51, "i", {"_id": 100})], 100)
    assert Applier(unacknowledged, frozenset(), has_unique_index=lambda ns: False).apply(events).applied == {"u": 1, "i": 1}
    wait_until(lambda: collection.count_documents({"$or": [{"w0": True}, {"_id": 100}]}) == 2, 30, "w:0 writes land")


def test_a_batch_is_timed_as_a_whole_at_the_lane_count_its_runs_were_split_by_and_a_unique_indexed_run_is_not_timed(
        shared_mongo) -> None:
    mongo = client(shared_mongo)
    db_name = unique("timedlanes")
    recorded: list[tuple[int, int]] = []

    class Recorded(FixedLanes):
        def record(self, lanes: int, writes: int, seconds: float) -> None:
            recorded.append((lanes, writes))

    def changes(ns: str, first: int, op: str = "i", count: int = 600) -> list:
        return [event for n in range(first, first + count) for event in decode_message(as_message(
            {"ts": Timestamp(4, n + 1), "op": op, "ns": ns, "o2": {"_id": n},
             "o": {"_id": n} if op == "i" else {"$v": 2, "diff": {"u": {"seen": True}}}}), "t", 0, n)]

    applier = Applier(mongo, frozenset(), has_unique_index=lambda ns: ns.endswith(".ordered"), lanes=Recorded(3))
    assert applier.apply(changes(f"{db_name}.free", 0)).applied == {"i": 600}
    assert applier.apply(changes(f"{db_name}.free", 600) + changes(f"{db_name}.ordered", 0)).applied == {"i": 1200}
    assert recorded == [(3, 600)]
    # Inserts, then updates of the same documents: two runs, timed together, once.
    assert applier.apply(changes(f"{db_name}.free", 1200) + changes(f"{db_name}.free", 1200, "u")).applied == {
        "i": 600, "u": 600}
    assert applier.apply(changes(f"{db_name}.free", 1800, count=400)).applied == {"i": 400}
    assert recorded == [(3, 600), (3, 1200)]
    assert mongo[db_name]["free"].count_documents({}) == 2200 and mongo[db_name]["ordered"].count_documents({}) == 600
    assert mongo[db_name]["free"].count_documents({"seen": True}) == 600


def test_a_change_refused_for_a_unique_value_its_transaction_frees_later_keeps_its_documents_order(shared_mongo) -> None:
    mongo = client(shared_mongo)
    db_name = unique("txnorder")
    collection = mongo[db_name].get_collection("c", codec_options=EXACT)
    collection.create_index("a", unique=True)
    collection.insert_many([{"_id": "K", "a": "x"}, {"_id": "J", "a": "y"}])
    # One transaction (one source time): J gives up y, K takes y and then moves on to w. K's partition came first.
    changes = [{"ts": Timestamp(4, 1), "op": "u", "ns": f"{db_name}.c", "o": {"$v": 2, "diff": {"u": {"a": value}}},
                "o2": {"_id": document}} for document, value in (("K", "y"), ("K", "w"), ("J", "z"))]
    events = [event for offset, c in enumerate(changes) for event in decode_message(as_message(c), "t", 0, offset)]
    report = Applier(mongo, frozenset()).apply(events)
    assert not report.conflicts and report.applied == {"u": 3}
    assert list(collection.find(sort=[("_id", 1)])) == [{"_id": "J", "a": "z"}, {"_id": "K", "a": "w"}]


def test_a_collection_once_applied_in_source_order_stays_so(shared_mongo) -> None:
    mongo = client(shared_mongo)
    ns = f"{unique('sticky')}.c"
    db_name, coll = ns.split(".")
    unique_indexes = UniqueIndexes(mongo, ttl_s=0.0)
    assert not unique_indexes(ns)
    mongo[db_name][coll].create_index("email", unique=True)
    assert unique_indexes(ns)
    mongo[db_name][coll].drop_index("email_1")
    unique_indexes.forget(ns)
    # changes held for source order must not be overtaken by later changes of their documents let through freely
    assert unique_indexes(ns)


CRASH_WORKLOADS = {
    # X is deleted and re-inserted with the value 1, moves on to 3, and Y takes 1.
    "re-inserted value taken later": [("d", "X", None), ("i", "X", {"x": 1, "turn": 1}), ("u", "X", {"x": 3}),
                                      ("u", "Y", {"x": 1})],
    # X and Y swap their values through a third one.
    "values swapped": [("u", "X", {"x": 9}), ("u", "Y", {"x": 1}), ("u", "X", {"x": 2})],
    # Y gives its value up by being deleted, X takes it, Y comes back with X's old one.
    "deleted and back": [("d", "Y", None), ("u", "X", {"x": 2}), ("i", "Y", {"x": 1, "back": True})],
}


def crash_workload(ns: str, name: str, replayed: bool) -> list[Event]:
    events = []
    for number, (op, document, value) in enumerate(CRASH_WORKLOADS[name], start=1):
        fields = {"ts": Timestamp(1000, number), "op": op, "ns": ns}
        if op == "u":
            fields.update(o={"$v": 2, "diff": {"u": value}}, o2={"_id": document})
        else:
            fields["o"] = {"_id": document, **(value or {})}
        events.append(Event(fields, "t", 0, number, 0, replayed=replayed))
    return events


@pytest.mark.parametrize("workload", list(CRASH_WORKLOADS))
def test_a_batch_applied_again_after_a_crash_converges_on_a_unique_index(shared_mongo, workload: str) -> None:
    """A kill -9 after any part of a batch was written and before its checkpoint: the write-ahead mark has the
    restarted consumer read the batch again as replayed, and the destination ends as the source did, whatever
    part of the batch it held (events replayed one by one would collide with values later events move)."""
    mongo = client(shared_mongo)
    db_name = unique("crashreplay")
    for written in range(len(CRASH_WORKLOADS[workload]) + 1):
        collection = mongo[db_name].get_collection(f"u{written}", codec_options=EXACT)
        collection.create_index("x", unique=True)
        collection.insert_many([{"_id": "X", "x": 1}, {"_id": "Y", "x": 2}])
        applier = Applier(mongo, frozenset(), has_unique_index=lambda ns: True)
        ns = collection.full_name
        report = applier.apply(crash_workload(ns, workload, replayed=False))
        assert not report.conflicts
        source_state = list(collection.find(sort=[("_id", 1)]))
        collection.drop()
        collection.create_index("x", unique=True)
        collection.insert_many([{"_id": "X", "x": 1}, {"_id": "Y", "x": 2}])
        applier.apply(crash_workload(ns, workload, replayed=False)[:written])  # what the crash left written

        report = applier.apply(crash_workload(ns, workload, replayed=True))
        assert not report.conflicts, (written, report.conflicts)
        assert list(collection.find(sort=[("_id", 1)])) == source_state, f"{written} events written before"


def test_a_batch_tried_again_after_a_transient_error_converges_on_a_unique_index(shared_mongo) -> None:
    """A write that fails on a transient error is tried again whole: the attempt that failed may have applied any
    part of it, so the second attempt replays it."""
    mongo = client(shared_mongo)
    collection = mongo[unique("retried")].get_collection("u", codec_options=EXACT)
    collection.create_index("x", unique=True)
    collection.insert_many([{"_id": "X", "x": 1}, {"_id": "Y", "x": 2}])
    applier = Applier(mongo, frozenset(), has_unique_index=lambda ns: True)
    prepared = applier.prepare(crash_workload(collection.full_name, "re-inserted value taken later", replayed=False))
    assert not applier.write(prepared).conflicts
    report = applier.write(prepared)  # as retry_transient calls it again
    assert not report.conflicts and report.applied == {"d": 1, "i": 1, "u": 2}
    assert list(collection.find(sort=[("_id", 1)])) == [{"_id": "X", "x": 3, "turn": 1}, {"_id": "Y", "x": 1}]


def test_final_states_written_together_leave_no_document_deleted_when_refused(stack) -> None:
    """The window's final states are written in one transaction: refused, none of its documents is left deleted
    (the replay after it may hold only their updates); cut off by a transient error, it is tried again whole."""
    server = stack.start_mongo(unique("rewrite"), "--enable-test-commands")
    try:
        mongo = client(server)
        collection = mongo[unique("window")].get_collection("u", codec_options=EXACT)
        collection.create_index("x", unique=True)
        before = [{"_id": "X", "x": 1}, {"_id": "Y", "x": 2}]
        collection.insert_many(before)
        swapped = [{"_id": "X", "x": 2}, {"_id": "Y", "x": 1}]
        mongo.admin.command("configureFailPoint", "failCommand", mode={"times": 1},
                            data={"failCommands": ["insert"], "errorCode": 2})
        assert not rewrite_together(mongo, collection, ["X", "Y"], swapped)
        assert list(collection.find(sort=[("_id", 1)])) == before, "the delete went back with the refused insert"
        mongo.admin.command("configureFailPoint", "failCommand", mode={"times": 1},
                            data={"failCommands": ["insert"], "errorCode": 112,
                                  "errorLabels": ["TransientTransactionError"]})
        assert rewrite_together(mongo, collection, ["X", "Y"], swapped)
        assert list(collection.find(sort=[("_id", 1)])) == swapped
    finally:
        server.stop()


def unique_indexed(shared_mongo, prefix: str, *documents: dict):  # type: ignore[no-untyped-def]
    """A fresh collection with a unique index on `x` holding `documents`, and an applier that orders it."""
    mongo = client(shared_mongo)
    collection = mongo[unique(prefix)].get_collection("u", codec_options=EXACT)
    collection.create_index("x", unique=True)
    if documents:
        collection.insert_many(list(documents))
    return collection, Applier(mongo, frozenset(), has_unique_index=lambda ns: True)


def copy_overlap_event(ns: str, offset: int, op: str, document: str, value: int, converge: bool = True) -> Event:
    """A copied document (insert) or a change overlapping the copy (update) setting the unique field `x`."""
    fields = {"ts": Timestamp(1000, offset), "op": op, "ns": ns}
    if op == "u":
        fields.update(o={"$v": 2, "diff": {"u": {"x": value}}}, o2={"_id": document})
    else:
        fields["o"] = {"_id": document, "x": value}
    return Event(fields, "t", 0, offset, 0, converge=converge)


def test_a_copy_taken_while_a_unique_value_moves_between_documents_converges(shared_mongo) -> None:
    """The copy read X with x: 1, then X moved to 2 and Y took 1, then the copy read Y. Copied in one batch and
    their changes in the next: Y's copy is refused for X's value and parked, then written with Y's change, once X's
    frees the value."""
    collection, applier = unique_indexed(shared_mongo, "fuzzycopy")
    ns = collection.full_name

    copied = applier.apply([copy_overlap_event(ns, 1, "i", "X", 1), copy_overlap_event(ns, 2, "i", "Y", 1)])
    assert not copied.conflicts and copied.parked is not None and [e.offset for e in copied.parked] == [2]
    assert copied.applied == {"i": 1}
    changed = applier.apply([copy_overlap_event(ns, 3, "u", "X", 2), copy_overlap_event(ns, 4, "u", "Y", 1)])
    assert not changed.conflicts and changed.parked == [] and changed.applied == {"i": 1, "u": 2}
    assert list(collection.find(sort=[("_id", 1)])) == [{"_id": "X", "x": 2}, {"_id": "Y", "x": 1}]


@pytest.mark.parametrize("window_ends_with", ["a change that does not converge", "its partition closing"])
def test_a_parked_state_still_refused_once_its_window_ends_is_a_conflict(shared_mongo, window_ends_with: str) -> None:
    """A document only the destination has holds the copied value: no change of the window frees it."""
    collection, applier = unique_indexed(shared_mongo, "parkedconflict", {"_id": "Z", "x": 1})
    ns = collection.full_name

    copied = applier.apply([copy_overlap_event(ns, 1, "i", "Y", 1)])
    assert not copied.conflicts and copied.parked is not None and len(copied.parked) == 1
    assert applier.apply([]).parked == copied.parked, "written again with every batch, still parked"
    if window_ends_with == "its partition closing":
        applier.parked.closing = frozenset({("t", 0)})
        ended = applier.apply([])
    else:
        ended = applier.apply([copy_overlap_event(ns, 5, "i", "W", 5, converge=False)])
    assert [(c.kind, c.event.offset) for c in ended.conflicts] == [("duplicate_key", 1)] and ended.parked == []
    expected = [{"_id": "Z", "x": 1}] + ([{"_id": "W", "x": 5}] if window_ends_with.startswith("a change") else [])
    assert list(collection.find(sort=[("_id", 1)])) == sorted(expected, key=lambda d: d["_id"])


def test_a_refused_final_state_is_left_to_the_documents_next_change(shared_mongo) -> None:
    """A replayed window ends at another source time in each partition: X's document here may be newer than Y's
    final state in the window and hold its value, which Y's next change (not replayed) frees."""
    collection, applier = unique_indexed(shared_mongo, "foldlater", {"_id": "X", "x": 1})
    ns = collection.full_name
    replayed_insert = copy_overlap_event(ns, 1, "i", "Y", 1, converge=False)
    replayed_insert.replayed = True
    report = applier.apply([replayed_insert, copy_overlap_event(ns, 2, "u", "Y", 5, converge=False)])
    assert not report.conflicts and report.parked == [] and report.applied == {"i": 1, "u": 1}
    assert list(collection.find(sort=[("_id", 1)])) == [{"_id": "X", "x": 1}, {"_id": "Y", "x": 5}]


@pytest.mark.parametrize("unique_index", [False, True])
def test_documents_with_dollar_named_top_level_fields_are_replaced_whole(shared_mongo, unique_index: bool) -> None:
    """MongoDB stores a `$price` field but refuses it in a replacement (code 52): every whole-document write of the
    consumer (a planned update, a converging copy, insert-on-duplicate-update) still lands, byte for byte."""
    from kafkashake.consumer.settings import ReplayPolicy
    mongo = client(shared_mongo)
    db_name = unique("dollarnames")
    collection = mongo[db_name].get_collection("c", codec_options=EXACT)
    source = [{"_id": n, "$price": bson.Decimal128(f"{n}.5"), "a": {"$x": n}} for n in range(3)]
    collection.insert_many([dict(d) for d in source])
    ns = f"{db_name}.c"
    changes = [
        {"ts": Timestamp(5, 1), "op": "u", "ns": ns, "o2": {"_id": 0}, "o": {"$v": 2, "diff": {"i": {"added": 1}}}},
        {"ts": Timestamp(5, 2), "op": "i", "ns": ns, "o": {"_id": 1, "$price": bson.Decimal128("9.5"), "z": 1}},
    ]
    events = [event for offset, c in enumerate(changes) for event in decode_message(as_message(c), "t", 0, offset)]
    events[1].converge = True
    applier = Applier(mongo, frozenset(), ReplayPolicy(insert_on_dup_update=True),
                      has_unique_index=lambda ns: unique_index)
    report = applier.apply(events)
    assert not report.conflicts and not report.rejected
    duplicate = decode_message(as_message({"ts": Timestamp(5, 3), "op": "i", "ns": ns,
                                           "o": {"_id": 2, "$price": bson.Int64(7), "$inc": True}}), "t", 0, 2)
    report = applier.apply(duplicate)
    assert not report.conflicts and not report.rejected
    expected = [
        {"_id": 0, "$price": bson.Decimal128("0.5"), "a": {"$x": 0}, "added": 1},
        {"_id": 1, "$price": bson.Decimal128("9.5"), "z": 1},
        {"_id": 2, "$price": bson.Int64(7), "$inc": True},
    ]
    raw = mongo[db_name].get_collection("c", codec_options=CodecOptions(document_class=RawBSONDocument))
    assert [bytes(d.raw) for d in raw.find(sort=[("_id", 1)])] == [bson.encode(d) for d in expected]
