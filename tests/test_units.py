"""Pure logic: positions, delivery bookkeeping, transaction assembly, partitioning, codec sniffing, secrets."""
from __future__ import annotations

import bson
import pytest
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from conftest import load_fixture_lines
from kafkashake.oplog import position
from kafkashake.oplog.transactions import TransactionAssembler
from kafkashake.producer.checkpoint import Checkpoint
from kafkashake.producer.delivery import DeliveryTracker
from kafkashake.producer.metrics import ProducerMetrics
from kafkashake.producer.operations import OperationExtractor
from kafkashake.producer.oplog_source import OplogSource
from kafkashake.runtime import secrets
from kafkashake.runtime.settings import KafkaSettings, Secret, secret_values
from kafkashake.schemas.codec import MessageFormat, UndecodableMessage, decode_events, sniff
from kafkashake.schemas.partitioning import PartitionBy, message_key, murmur2, partition_for


def ts(i: int, inc: int = 1) -> Timestamp:
    return Timestamp(1000 + i, inc)


def test_position_parse_and_neighbours() -> None:
    assert position.parse("1700000000,5") == Timestamp(1700000000, 5)
    assert position.parse("2023-11-14T22:13:20Z") == Timestamp(1700000000, 0)
    assert position.predecessor(Timestamp(5, 0)) == Timestamp(4, 0xFFFFFFFF)
    assert position.successor(position.predecessor(Timestamp(5, 3))) == Timestamp(5, 3)
    assert position.from_int64(position.to_int64(Timestamp(7, 9))) == Timestamp(7, 9)
    with pytest.raises(ValueError):
        position.parse("yesterday")


def test_checkpoint_waits_for_every_acknowledgement() -> None:
    tracker = DeliveryTracker(ts(0))
    slots = []
    for i in (1, 2, 3):
        tracker.read(ts(i))
        slots.append(tracker.sent(ts(i)))
    tracker.caught_up()
    slots[0].acknowledge()
    slots[2].acknowledge()
    assert tracker.safe_position() == position.predecessor(ts(2)), "resuming after it re-reads ts(2)"
    slots[1].acknowledge()
    assert tracker.safe_position() == ts(3)


def test_shared_ts_is_not_checkpointed_until_sealed() -> None:
    tracker = DeliveryTracker(ts(0))
    tracker.read(ts(1))
    tracker.sent(ts(1)).acknowledge()
    assert tracker.safe_position() == ts(0), "more entries with ts(1) may still be unread"
    tracker.read(ts(1))
    second = tracker.sent(ts(1))
    tracker.read(ts(2))
    assert tracker.safe_position() == position.predecessor(ts(1))
    second.acknowledge()
    assert tracker.safe_position() == ts(1)


def test_open_transaction_holds_the_checkpoint_and_it_never_moves_back() -> None:
    tracker = DeliveryTracker(ts(0))
    tracker.read(ts(5))
    tracker.caught_up()
    assert tracker.safe_position(hold_below=ts(3)) == position.predecessor(ts(3))
    assert tracker.safe_position(hold_below=ts(2)) == position.predecessor(ts(3))
    assert tracker.safe_position() == ts(5)


def _raw(document: dict) -> RawBSONDocument:
    return RawBSONDocument(bson.encode(document))


ENTRIES = {e["_fixture"]["case"]: e for e in load_fixture_lines("oplog_entries.jsonl")}


def _entry(case: str) -> RawBSONDocument:
    document = dict(ENTRIES[case])
    document.pop("_fixture")
    return _raw(document)


def test_partial_transaction_chain_released_at_commit_with_commit_ts() -> None:
    assembler = TransactionAssembler()
    first = _entry("txn_large_unprepared_partialTxn_first")
    assert assembler.feed(first) == []
    assert assembler.oldest_open_position() == first["ts"]
    assert assembler.feed(_entry("txn_large_unprepared_partialTxn_middle")) == []
    final = _entry("txn_large_unprepared_final_with_count")
    operations = assembler.feed(final)
    assert [op["o"]["_id"] for op in operations] == [0, 1, 2, 3, 4, 5]
    assert {op["ts"] for op in operations} == {final["ts"]}
    assert assembler.oldest_open_position() is None


def test_a_transaction_part_read_again_after_a_source_error_is_not_applied_twice() -> None:
    assembler = TransactionAssembler()
    first = _entry("txn_large_unprepared_partialTxn_first")
    assert assembler.feed(first) == []
    assert assembler.feed(first) == []
    assert assembler.feed(_entry("txn_large_unprepared_partialTxn_middle")) == []
    operations = assembler.feed(_entry("txn_large_unprepared_final_with_count"))
    assert [op["o"]["_id"] for op in operations] == [0, 1, 2, 3, 4, 5]


class _ReaderOf:
    def __init__(self, *batches: list[bytes]) -> None:
        self._batches = batches

    def check_within_window(self, after: Timestamp) -> None:
        pass

    def tail(self, after: Timestamp):
        yield from self._batches
        while True:
            yield None


def test_a_committed_transaction_holds_the_checkpoint_below_its_first_entry_until_kafka_has_it() -> None:
    """A checkpoint between the first part and the commit's acknowledgement would resume at the commit, and the
    parts before it would be gone."""
    parts = [_entry(case) for case in ("txn_large_unprepared_partialTxn_first", "txn_large_unprepared_partialTxn_middle",
                                       "txn_large_unprepared_final_with_count")]
    source = OplogSource(_ReaderOf([bytes(part.raw) for part in parts]), OperationExtractor(frozenset()),
                         ProducerMetrics("oplog", "bson"))
    source.start(Checkpoint(position.predecessor(parts[0]["ts"]), None, "oplog"))
    changes = source.changes()
    published = next(changes)
    assert next(changes) is None, "read to the end"
    assert len(published) == 6
    assert source.safe_checkpoint().ts < parts[0]["ts"]
    for _, slot in published[:-1]:
        slot.acknowledge()
    assert source.safe_checkpoint().ts < parts[0]["ts"]
    published[-1][1].acknowledge()
    assert source.safe_checkpoint().ts == parts[-1]["ts"]


def test_prepared_transaction_commits_and_abort_discards() -> None:
    assembler = TransactionAssembler()
    for case in ("txn_large_prepared_committed_0", "txn_large_prepared_committed_1", "txn_large_prepared_committed_2"):
        assert assembler.feed(_entry(case)) == []
    committed = assembler.feed(_entry("txn_large_prepared_committed_3"))
    assert [op["o"]["_id"] for op in committed] == list(range(10))

    aborting = TransactionAssembler()
    prepared = dict(ENTRIES["txn_prepare_applyOps_4_4"])
    prepared.pop("_fixture")
    assert aborting.feed(_raw(prepared)) == []
    abort = {**prepared, "o": {"abortTransaction": 1}}
    assert aborting.feed(_raw(abort)) == []
    assert aborting.oldest_open_position() is None


def test_extractor_handles_every_fixture_entry() -> None:
    extractor = OperationExtractor(frozenset({"kafkashake"}))
    published = []
    for case in ENTRIES:
        published.extend(extractor.extract(_entry(case)))
    namespaces = {op.ns for op in published}
    assert not any(ns.startswith(("config.", "admin.", "local.")) for ns in namespaces)
    assert all(op.op in "iud" for op in published)
    assert "trx.test" in namespaces and "txntest.c" in namespaces
    assert extractor.skipped["migration"] == 1
    for op in published:
        decoded = bson.decode(op.value)
        assert decoded["ns"] == op.ns and decoded["ts"] == op.ts


def test_murmur2_matches_kafka_vectors() -> None:
    assert murmur2(b"21") == -973932308
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"a-little-bit-long-string") == -985981536
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971


def test_partition_for_agrees_with_the_reference_murmur2() -> None:
    import random

    generator = random.Random(7)
    for length in range(0, 80):
        key = bytes(generator.randrange(256) for _ in range(length))
        for partitions in (1, 3, 8, 50):
            assert partition_for(key, partitions) == (murmur2(key) & 0x7FFFFFFF) % partitions


def test_message_keys_by_mode() -> None:
    assert message_key(PartitionBy.ID, "db.c", 7) == b'db.c\x00{"$number":"7"}'
    assert message_key(PartitionBy.COLLECTION, "db.c", 7) == b"db.c"
    assert message_key(PartitionBy.DATABASE, "db.c", 7) == b"db"
    assert 0 <= partition_for(b"db.c", 8) < 8


def test_sniffing_puts_bson_before_json() -> None:
    for size in range(5, 600):
        document = {"p": "x" * size}
        encoded = bson.encode(document)
        if encoded[0] == ord("{"):
            assert sniff(encoded) is MessageFormat.BSON
            assert decode_events(encoded) == [document]
            break
    else:
        pytest.fail("no BSON document starting with '{' was built")
    assert sniff(b'  {"op": "i"}') is MessageFormat.JSON
    for garbage in (b"", b"\x00\x01", b"hello", bson.encode({"a": 1})[:-3]):
        with pytest.raises(UndecodableMessage):
            decode_events(garbage)


def test_secrets_are_masked_from_the_settings_that_declare_them() -> None:
    settings = KafkaSettings("h:1", sasl_password=Secret("sasl-pw-123"), properties={"ssl.key.password": "keypw"})
    uri = Secret("mongodb://admin:s3cr3t-pw@host:27017/?authSource=admin")
    redact = secrets.Redactor([*secret_values(settings), *secret_values(uri)])
    text = redact("connect mongodb://admin:s3cr3t-pw@host:27017 failed; password s3cr3t-pw, sasl-pw-123, keypw")
    assert "s3cr3t-pw" not in text and "sasl-pw-123" not in text and "keypw" not in text
    assert "mongodb://admin:***@host" in text


def test_json_log_lines_are_structured_and_redacted() -> None:
    import json
    import logging

    from kafkashake.runtime.logs import JsonFormatter, TextFormatter

    secrets.install(secrets.Redactor(["sasl-secret-value"]))
    record = logging.LogRecord("kafkashake.test", logging.WARNING, __file__, 1,
                               "connecting to mongodb://u:topsecret@h:1 with sasl-secret-value", None, None)
    record.partition = 3
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and line["partition"] == 3 and line["logger"] == "kafkashake.test"
    assert "topsecret" not in line["msg"] and "sasl-secret-value" not in line["msg"]
    text = TextFormatter().format(record)
    assert "partition=3" in text and "topsecret" not in text


def test_canonical_json_fast_path_matches_json_util() -> None:
    from bson import Int64, ObjectId, json_util

    from kafkashake.schemas.partitioning import canonical_json

    canonical = json_util.JSONOptions(json_mode=json_util.JSONMode.CANONICAL)
    for value in (ObjectId(), 0, -1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, Int64(5), "plain", "quo\"te ä € \n",
                  True, 1.5, {"a": 1, "b": [ObjectId()]}, None):
        assert canonical_json(value) == json_util.dumps(value, json_options=canonical, separators=(",", ":"))


def test_snapshot_document_id_reads_common_id_types_from_the_leading_bytes() -> None:
    from bson import Int64, ObjectId
    from bson.raw_bson import RawBSONDocument

    from kafkashake.producer.snapshot import document_id

    for value in [1, Int64(2**40), 2.5, "abc", "", "héllo", ObjectId(), None, [1], b"x", {"k": 1}]:
        document = RawBSONDocument(bson.encode({"_id": value, "x": 1}))
        assert bson.encode({"": document_id(document)}) == bson.encode({"": value})
    assert document_id(RawBSONDocument(bson.encode({"x": 1, "_id": 7}))) == 7


def test_a_primary_stepping_down_mid_bulk_write_is_retried_not_refused() -> None:
    from pymongo.errors import BulkWriteError

    from kafkashake.runtime.retry import is_transient

    def failed(*write_errors: dict, concern: list | None = None) -> BulkWriteError:  # type: ignore[type-arg]
        return BulkWriteError({"writeErrors": list(write_errors), "writeConcernErrors": concern or [], "nInserted": 3})

    # mongod reports NotWritablePrimary and its kind per write, in writeErrors, when the primary steps down mid-batch
    assert is_transient(failed({"index": 3, "code": 10107, "errmsg": "not primary"}))
    assert is_transient(failed({"index": 0, "code": 1, "errmsg": "x", "errorLabels": ["RetryableWriteError"]}))
    assert is_transient(failed(concern=[{"code": 91, "errmsg": "shutting down"}]))
    assert not is_transient(failed({"index": 3, "code": 11000, "errmsg": "E11000 duplicate key"}))
    assert not is_transient(failed({"index": 0, "code": 121, "errmsg": "Document failed validation"}))
    assert not is_transient(failed({"index": 0, "code": 10107}, concern=[{"code": 64, "errmsg": "wtimeout"}]))
    assert not is_transient(failed())
