"""Exact replay where MongoDB's own equality is wider than BSON's: an `_id` re-inserted with another numeric type
lands in the partition of its earlier changes, and the json format gives back documents whose field names look like
Extended JSON, and every numeric type, byte for byte."""
from __future__ import annotations

import pytest
from bson import Decimal128, Int64
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from conftest import checkpointed, client, consumer_args, producer_args, unique, wait_until
from test_pipeline import wait_equal
from test_wire_contract import LEGAL_LOOKALIKES

pytestmark = pytest.mark.e2e

ROUNDS = 200


def retyped(round_: int) -> list[tuple[object, object]]:
    """The same `_id` value in two numeric types, MongoDB holding them equal; also inside an embedded `_id`."""
    value = 1000 + round_
    kinds = [(Int64(value), float(value)), (value, Decimal128(str(value))), (float(value), Int64(value)),
             ({"k": Int64(value), "s": "x"}, {"k": float(value), "s": "x"})]
    return [kinds[round_ % len(kinds)]]


@pytest.mark.parametrize("policy", [[], ["--insert-on-dup-update", "--upsert"]], ids=["default", "upsert"])
def test_an_id_reinserted_with_another_numeric_type_keeps_its_order(source, destination, brokers, cli,
                                                                    policy: list[str]) -> None:
    topic = unique("retyped")
    producer = cli(*producer_args(source, brokers, topic, "--start-position", "earliest"), name="producer").start()
    consumer = cli(*consumer_args(destination, brokers, topic, *policy), name="consumer").start()
    wait_until(lambda: checkpointed(source), 60, "first checkpoint")
    docs = client(source)["retyped"]["docs"]
    for round_ in range(ROUNDS):
        for first, second in retyped(round_):
            docs.insert_one({"_id": first, "v": "first", "round": round_})
            docs.delete_one({"_id": first})
            docs.insert_one({"_id": second, "v": "second", "round": round_})
            docs.update_one({"_id": second}, {"$set": {"updated": Int64(round_)}})
    wait_equal(source, destination, "retyped", timeout=240)
    stored = list(client(destination).get_database(
        "retyped", codec_options=CodecOptions(document_class=RawBSONDocument))["docs"].find())
    assert len(stored) == ROUNDS
    assert producer.terminate() == 0 and consumer.terminate() == 0
    assert "conflict:" not in consumer.log(), "nothing was out of order"


@pytest.mark.parametrize("json_mode", ["canonical", "relaxed"])
def test_json_format_replays_lookalike_field_names_and_every_number_type_exactly(source, destination, brokers, cli,
                                                                                 json_mode: str) -> None:
    topic = unique(f"json-{json_mode}")
    producer = cli(*producer_args(source, brokers, topic, "--format", "json", "--json-mode", json_mode,
                                  "--start-position", "earliest"), name="producer").start()
    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    docs = client(source)["lookalike"]["docs"]
    for number, fields in enumerate(LEGAL_LOOKALIKES):
        docs.insert_one({"_id": number, **fields, "int64": Int64(7), "int32": 7, "double": 7.0,
                         "decimal": Decimal128("7.0")})
        docs.update_one({"_id": number}, {"$set": {"int64": Int64(8), "nested": {"$numberLong": "9"}}})
    docs.insert_one({"_id": "plain", "n": 1, "s": "relaxed JSON is exact for this one"})
    wait_equal(source, destination, "lookalike", timeout=180)
    assert producer.terminate() == 0 and consumer.terminate() == 0
    assert "dead letter" not in consumer.log() and "conflict:" not in consumer.log()


def test_a_producer_upgraded_from_wire_version_1_fences_the_old_keys_with_a_barrier(source, destination, brokers,
                                                                                     cli) -> None:
    """Keys changed for numeric _ids in wire version 2: a producer resuming from a version-1 checkpoint first sends a
    no-op barrier to every partition, so changes keyed the old way apply before those keyed the new way."""
    topic = unique("upgraded")
    docs = client(source)["upgrade"]["docs"]
    producer = cli(*producer_args(source, brokers, topic, "--start-position", "earliest"), name="producer").start()
    wait_until(lambda: checkpointed(source), 60, "first checkpoint")
    docs.insert_many([{"_id": Int64(i), "v": 1} for i in range(50)])
    assert producer.terminate() == 0
    checkpoints = client(source)["kafkashake"]["checkpoint"]
    checkpoints.update_one({}, {"$unset": {"wire_version": ""}})  # as a version-1 producer left it
    docs.update_many({}, {"$set": {"v": 2}})
    upgraded = cli(*producer_args(source, brokers, topic), name="producer-upgraded").start()
    consumer = cli(*consumer_args(destination, brokers, topic), name="consumer").start()
    wait_equal(source, destination, "upgrade")
    assert "upgraded from wire version 1" in upgraded.log()
    assert "DDL barrier passed" in consumer.log()
    assert checkpoints.find_one()["wire_version"] == 2
    assert upgraded.terminate() == 0 and consumer.terminate() == 0
