"""mongod's update formats applied in memory: every fixture diff case, v1 twins, and the change-stream dialect."""
from __future__ import annotations

import bson
import pytest
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions

from conftest import load_fixture_lines
from kafkashake.consumer.document_update import UpdateFormatError, apply_update, as_update_operators

CASES = load_fixture_lines("diff_cases.jsonl")
EXACT = CodecOptions(uuid_representation=UuidRepresentation.UNSPECIFIED)


def same_bson(a: dict, b: dict) -> bool:
    return bson.encode(a, codec_options=EXACT) == bson.encode(b, codec_options=EXACT)


@pytest.mark.parametrize("case", CASES, ids=[c["_fixture"]["case"] for c in CASES])
def test_every_mongod_diff_case(case: dict) -> None:
    assert same_bson(apply_update(case["before"], case["oplog_o"]), case["after"])


@pytest.mark.parametrize(
    "case", [c for c in CASES if "oplog_o_v1_log_builder" in c],
    ids=[c["_fixture"]["case"] for c in CASES if "oplog_o_v1_log_builder" in c],
)
def test_v1_log_builder_twins(case: dict) -> None:
    v1 = case["oplog_o_v1_log_builder"]
    assert same_bson(apply_update(case["before"], {"$v": 1, **v1}), case["after"])


def test_change_stream_dialect_truncate_remove_set() -> None:
    before = {"_id": 1, "a": [1, 2, 3, 4], "b": {"c": 1, "d": 2}, "e": 5}
    update = {"$v": 2, "diff": {"updatedFields": {"a.1": 9, "b.x": {"y": 1}, "n": 1},
                                "removedFields": ["b.d", "e"], "truncatedArrays": [{"field": "a", "newSize": 2}]}}
    assert apply_update(before, update) == {"_id": 1, "a": [1, 9], "b": {"c": 1, "x": {"y": 1}}, "n": 1}


def test_change_stream_dialect_disambiguated_paths() -> None:
    before = {"_id": 1, "a.b": {"0": 1}, "arr": [{"x": 1}]}
    update = {"$v": 2, "diff": {"updatedFields": {"a.b.0": 2, "arr.0.x": 3},
                                "disambiguatedPaths": {"a.b.0": ["a.b", "0"], "arr.0.x": ["arr", 0, "x"]}}}
    assert apply_update(before, update) == {"_id": 1, "a.b": {"0": 2}, "arr": [{"x": 3}]}


def test_set_pads_array_and_unset_nulls_element() -> None:
    assert apply_update({"_id": 1, "a": [1]}, {"$set": {"a.3": 4}}) == {"_id": 1, "a": [1, None, None, 4]}
    assert apply_update({"_id": 1, "a": [1, 2]}, {"$v": 1, "$unset": {"a.0": True}}) == {"_id": 1, "a": [None, 2]}


def test_replacement_keeps_id_and_drops_other_fields() -> None:
    assert apply_update({"_id": 7, "old": 1}, {"new": 2}) == {"_id": 7, "new": 2}


def test_input_document_is_not_modified() -> None:
    before = {"_id": 1, "a": {"b": [1, {"c": 2}]}}
    apply_update(before, {"$set": {"a.b.1.c": 3}})
    assert before == {"_id": 1, "a": {"b": [1, {"c": 2}]}}


def test_unknown_update_operator_is_an_error() -> None:
    with pytest.raises(UpdateFormatError):
        apply_update({"_id": 1}, {"$inc": {"a": 1}})


def test_only_diffs_mongod_applies_identically_become_update_operators() -> None:
    def diff(**sections: object) -> dict:  # type: ignore[type-arg]
        return {"$v": 2, "diff": sections}

    assert as_update_operators(diff(u={"n": -1, "name": "x"}, d={"gone": False})) == {
        "$set": {"n": -1, "name": "x"}, "$unset": {"gone": ""}}
    refused = [
        diff(i={"new": 1}),  # also moves a field that exists to the end
        diff(u={"name": "x", "n": 1}),  # a field the destination lacks would be appended in another order
        diff(sa={"u": {"b": 1}}),  # a no-op on a missing parent, null on a scalar one
        diff(sa={"a": True, "u0": 1}),
        diff(b={"blob": {"o": 0, "d": "AA=="}}),
        diff(u={"n": 1}, d={"n": False}),  # mongod never logs it, and refuses it as update operators
        diff(u={"a.b": 1}), diff(u={"$x": 1}), diff(u={"0": 1}), diff(u={"": 1}), diff(d={"a.b": False}),
        diff(u={"doc": {"$lookalike": 1}}), diff(u={"list": [{"dotted.name": 1}]}),
        diff(),
        {"$v": 2, "diff": {"updatedFields": {"n": 1}}},  # the change-stream dialect: paths are ambiguous
        {"$set": {"n": 1}},
    ]
    assert [as_update_operators(update) for update in refused] == [None] * len(refused)
    assert as_update_operators(diff(u={"n": 1}), "updateDescription") is None
