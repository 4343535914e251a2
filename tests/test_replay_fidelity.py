"""Replay fidelity against a running server: every mongod diff case and every real oplog entry goes through
the consumer's real decode and write path."""
from __future__ import annotations

import bson
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from conftest import client, load_fixture_lines, unique
from kafkashake.consumer.applier import Applier
from kafkashake.consumer.decoder import decode_message

EXACT = CodecOptions(uuid_representation=UuidRepresentation.UNSPECIFIED)
RAW = CodecOptions(document_class=RawBSONDocument, uuid_representation=UuidRepresentation.UNSPECIFIED)


def as_message(event: dict) -> bytes:
    return bson.encode(event, codec_options=EXACT)


def test_every_diff_case_through_the_write_path(shared_mongo) -> None:
    cases = load_fixture_lines("diff_cases.jsonl")
    mongo = client(shared_mongo)
    db_name = unique("diffcases")
    collection = mongo[db_name].get_collection("cases", codec_options=EXACT)
    for number, case in enumerate(cases):
        collection.insert_one({"_id": number, **case["before"]})
    applier = Applier(mongo, frozenset())
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
