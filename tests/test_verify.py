"""`kafkashake verify`: the comparison's pure parts, and the command on real servers, at rest and while
replication runs."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from bson import Decimal128, Int64, ObjectId
from bson.min_key import MinKey
from bson.max_key import MaxKey

from conftest import checkpointed, client, consumer_args, producer_args, unique, wait_until
from kafkashake.demo import embedded, workload
import bson
from bson.code import Code
from bson.son import SON

from kafkashake.verification import (Doc, NamespaceResult, canonical, compare_documents, compare_range,
                                     document_id, first_difference, id_order, ranges)


def test_id_order_is_mongodbs_bson_order_with_numbers_by_value() -> None:
    ordered = [MinKey(), None, -1.5, 0, Int64(1), 1.5, Decimal128("2"), 3, "", "a", "b", {"a": 1}, {"a": 1, "b": 1},
               {"b": 0}, b"\x00", ObjectId("000000000000000000000000"), False, True, Code("a"), MaxKey()]
    assert sorted(ordered, key=id_order) == ordered
    assert id_order(Int64(7)) == id_order(7) == id_order(7.0) == id_order(Decimal128("7"))


def test_first_difference_sees_types_order_and_nesting() -> None:
    assert first_difference({"_id": 1, "n": 1}, {"_id": 1, "n": 1}) is None
    assert first_difference({"_id": 1, "n": 1}, {"_id": 1, "n": Int64(1)}) == ("n", 1, Int64(1))
    assert first_difference({"a": {"b": [1, 2]}}, {"a": {"b": [1, 3]}}) == ("a.b.1", 2, 3)
    assert first_difference({"a": 1}, {"a": 1, "b": 2}) == ("b", "<missing>", 2)
    assert first_difference({"a": 1, "b": 2}, {"b": 2, "a": 1})[0] == "a"


def test_field_order_is_ignored_only_when_asked_and_nothing_else_is() -> None:
    a = bson.encode(SON([("_id", 1), ("x", SON([("b", 1), ("a", [SON([("d", 1), ("c", 2)]), 3])]))]))
    b = bson.encode(SON([("x", SON([("a", [SON([("c", 2), ("d", 1)]), 3]), ("b", 1)])), ("_id", 1)]))
    assert canonical(a, True) == canonical(b, True) and canonical(a, False) != canonical(b, False)
    assert compare_documents(a, b, True) is None and compare_documents(a, b, False) is not None
    reordered_array = bson.encode({"_id": 1, "x": {"a": [3, SON([("c", 2), ("d", 1)])], "b": 1}})
    assert compare_documents(a, reordered_array, True) is not None
    duplicate = b"".join([b"\x10a\x00\x01\x00\x00\x00", b"\x10a\x00\x02\x00\x00\x00"])
    doubled = (len(duplicate) + 5).to_bytes(4, "little") + duplicate + b"\x00"
    assert compare_documents(doubled, bson.encode({"a": 2}), True) is not None
    assert document_id(bson.encode(SON([("n", 1), ("_id", Code("f"))]))) == Code("f")


def doc(document_id, body: bytes = b"") -> Doc:
    return Doc(document_id, id_order(document_id), body or repr(document_id).encode())


def test_ranges_cut_both_sides_at_the_same_bounds_and_find_every_kind_of_difference() -> None:
    source = [doc(i) for i in range(10)]
    dest = sorted([doc(i) for i in range(10) if i != 3] + [doc(4.5), doc(20), doc(21)], key=lambda d: d.order)
    cut = list(ranges(iter(source), iter(dest), 4))
    assert [[d.id for d in left] for left, _ in cut] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], []]
    assert [[d.id for d in right] for _, right in cut] == [[0, 1, 2], [4, 4.5, 5, 6, 7], [8, 9], [20, 21]]
    result = NamespaceResult("db.c", "db.c")
    for left, right in cut:
        compare_range(result, left, right, ignore_field_order=False)
    assert (result.missing, result.extra, result.different, result.equal) == (1, 3, 0, 9)


# ---------------------------------------------------------------------------------------------- real servers


def verify(source, destination, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kafkashake", "verify", "--source-uri", embedded.mongo_uri(source),
                           "--dest-uri", embedded.mongo_uri(destination), *extra],
                          capture_output=True, text=True, timeout=600)


def report(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode in (0, 1), result.stderr
    return {entry["ns"]: entry for entry in json.loads(result.stdout)["namespaces"]}


def same_on_both(source, destination, db: str, documents: list[dict]) -> None:
    for side in (source, destination):
        collection = client(side)[db]["c"]
        collection.insert_many([dict(d) for d in documents])
        collection.create_index("email", unique=True)
        collection.create_index([("n", 1), ("s", -1)], name="n_s")


@pytest.mark.e2e
def test_equal_pairs_exit_0_and_each_kind_of_difference_exits_1_with_namespace_and_id(source, destination) -> None:
    db = unique("verify")
    same_on_both(source, destination, db, [{"_id": i, "n": i, "s": f"v{i}", "email": f"{i}@x"} for i in range(50)])
    equal = verify(source, destination, "--filter-namespace-white", db)
    assert equal.returncode == 0, equal.stdout + equal.stderr
    assert f"{db}.c: equal" in equal.stdout

    dst = client(destination)[db]["c"]
    dst.delete_one({"_id": 1})
    dst.insert_one({"_id": 100, "n": 100, "s": "extra", "email": "100@x"})
    dst.update_one({"_id": 2}, {"$set": {"s": "changed"}})
    dst.update_one({"_id": 3}, {"$set": {"n": Int64(3)}})
    dst.drop_index("n_s")
    client(destination)[db]["d"].insert_one({"_id": 1})
    client(source)[db]["d"].insert_one({"_id": 1})
    client(source)[db]["d"].create_index("k", expireAfterSeconds=60)
    client(destination)[db]["d"].create_index("k", expireAfterSeconds=90)

    for mode in ("hash", "full"):
        result = verify(source, destination, "--filter-namespace-white", db, "--mode", mode, "--output", "json")
        assert result.returncode == 1, result.stdout + result.stderr
        found = report(result)
        c, d = found[f"{db}.c"], found[f"{db}.d"]
        assert (c["missing"], c["extra"], c["different"]) == (1, 1, 2)
        by_id = {json.dumps(x["id"]): x for x in c["differences"]}
        assert by_id['{"$numberInt": "1"}']["kind"] == "missing"
        assert by_id['{"$numberInt": "100"}']["kind"] == "extra"
        assert by_id['{"$numberInt": "2"}']["path"] == "s"
        assert by_id['{"$numberInt": "3"}']["source_value"] == {"$numberInt": "3"}
        assert by_id['{"$numberInt": "3"}']["dest_value"] == {"$numberLong": "3"}
        assert any("missing on the destination" in problem for problem in c["index_problems"])
        assert any("expireAfterSeconds" in problem for problem in d["index_problems"])

    text = verify(source, destination, "--filter-namespace-white", db)
    assert f"{db}.c: DIFFERENT" in text.stdout and '_id {"$numberInt": "3"} at n' in text.stdout
    counted = verify(source, destination, "--filter-namespace-white", db, "--mode", "count")
    assert counted.returncode == 1 and "missing on the destination" in counted.stdout

    client(destination)[db]["stray"].insert_one({"_id": 1})
    stray = verify(source, destination, "--filter-namespace-white", db, "--mode", "count")
    assert f"{db}.stray: EXTRA on the destination" in stray.stdout


@pytest.mark.e2e
def test_a_filter_that_matches_nothing_exits_2(source, destination) -> None:
    result = verify(source, destination, "--filter-namespace-white", "no_such_db_anywhere")
    assert result.returncode == 2 and "no_such_db_anywhere" in result.stderr


@pytest.mark.e2e
def test_bad_options_exit_2(source, destination) -> None:
    assert verify(source, destination, "--mode", "fast").returncode == 2
    assert verify(source, destination, "--transform-namespace", "nocolon").returncode == 2
    missing = subprocess.run([sys.executable, "-m", "kafkashake", "verify", "--source-uri",
                              embedded.mongo_uri(source)], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "--dest-uri" in missing.stderr


@pytest.mark.e2e
def test_one_difference_among_200k_documents_is_found(source, destination) -> None:
    db = unique("big")
    documents = [{"_id": i, "n": i, "name": f"user{i}", "score": i / 7} for i in range(200_000)]
    for side in (source, destination):
        for start in range(0, len(documents), 20_000):
            client(side)[db]["c"].insert_many(documents[start:start + 20_000], ordered=False)
    client(destination)[db]["c"].update_one({"_id": 123_456}, {"$set": {"score": 0.5}})
    result = verify(source, destination, "--filter-namespace-white", db, "--output", "json")
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    found = summary["namespaces"][0]
    assert (found["compared"], found["equal"], found["different"]) == (200_000, 199_999, 1)
    assert found["differences"][0]["id"] == {"$numberInt": "123456"} and found["differences"][0]["path"] == "score"
    print(f"bytes read: {summary['bytes_read']}")


@pytest.mark.e2e
def test_live_mode_reports_no_difference_in_flight_and_then_a_real_one(source, destination, brokers, cli) -> None:
    topic = unique("live")
    group = unique("group")
    cli(*producer_args(source, brokers, topic, "--start-position", "earliest"), name="producer").start()
    cli(*consumer_args(destination, brokers, topic, "--group", group), name="consumer").start()
    wait_until(lambda: checkpointed(source), 60, "the producer's first checkpoint")
    shop = client(source)["live"]
    workload.run_workload(shop, 300, seed=11)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, embedded.mongo_uri(source)])
    try:
        wait_until(lambda: client(destination)["live"]["stream"].count_documents({}) > 50, 120, "replication runs")
        # Documents are visible a moment before the batch that wrote them is checkpointed.
        wait_until(lambda: client(destination)["kafkashake"]["consumer_checkpoint"].find_one(
            {"group": group, "watermark": {"$ne": None}}), 60, "the consumer's first checkpoint (not only a write-ahead mark)")
        live = verify(source, destination, "--filter-namespace-white", "live", "--live", "--group", group)
        assert live.returncode == 0, live.stdout + live.stderr
        assert "live recheck" in live.stdout or "EQUAL" in live.stdout
        client(destination)["live"]["orders_kept"].insert_one({"_id": "only-here"})
        client(source)["live"]["orders_kept"].insert_one({"_id": "kept"})
        wait_until(lambda: client(destination)["live"]["orders_kept"].find_one({"_id": "kept"}) is not None, 120,
                   "the source's document replicated")
        injected = verify(source, destination, "--filter-namespace-white", "live", "--live", "--group", group)
        assert injected.returncode == 1, injected.stdout + injected.stderr
        assert 'extra _id "only-here"' in injected.stdout.replace('{"$numberInt"', "")
    finally:
        writer.terminate()
        writer.wait(30)


WRITER = """
import sys, itertools
from pymongo import MongoClient
stream = MongoClient(sys.argv[1])["live"]["stream"]
for i in itertools.count():
    stream.update_one({"_id": i % 500}, {"$set": {"n": i}}, upsert=True)
"""
