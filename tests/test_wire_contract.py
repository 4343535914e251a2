"""The wire contract: Avro schemas, their compatibility rule, and the codec for every format."""
from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import bson
import fastavro
import pytest
from bson import Binary, Decimal128, Int64, ObjectId, Timestamp

from schemas import topics
from schemas.codec import (AVRO_CODECS, JsonMode, MessageFormat, UndecodableMessage, decode_events, encode_json,
                           encode_raw_batch, raw_record, sniff)

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
SAMPLE = {"ts": Timestamp(1700000000, 7), "t": Int64(3), "op": "u", "ns": "shop.orders",
          "ui": Binary(b"u" * 16, 4), "o": {"$v": 2, "diff": {"u": {"n": 5, "price": Decimal128("1.50")}}},
          "o2": {"_id": ObjectId("65a1b2c3d4e5f60718293a4b")}, "wall": dt.datetime(2024, 1, 1, 12, 0),
          "lsid": {"id": Binary(b"s" * 16, 4)}, "txnNumber": Int64(9)}


def sample_record(schema: dict) -> dict:
    defaults = {"long": 1, "string": "x", "bytes": b"\x05\x00\x00\x00\x00"}
    record = {}
    for field in schema["fields"]:
        kind = field["type"]
        record[field["name"]] = field.get("default") if isinstance(kind, list) else defaults[kind]
    return record


@pytest.mark.parametrize("name", ["raw_batch", "envelope"])
def test_schema_parses_and_stays_compatible_with_every_frozen_version(name: str) -> None:
    current = json.loads((SCHEMAS / f"{name}.avsc").read_text())
    parsed_current = fastavro.parse_schema(current)
    frozen_versions = sorted((SCHEMAS / "compat").glob(f"{name}.v*.avsc"))
    assert frozen_versions, "every published schema has a frozen copy"
    for frozen_path in frozen_versions:
        frozen = json.loads(frozen_path.read_text())
        parsed_frozen = fastavro.parse_schema(frozen)
        old_names = {f["name"] for f in frozen["fields"]}
        new_fields = [f for f in current["fields"] if f["name"] not in old_names]
        assert old_names <= {f["name"] for f in current["fields"]}, "fields are never removed"
        assert all("default" in f for f in new_fields), "added fields need defaults"
        for writer, reader, record in ((parsed_current, parsed_frozen, sample_record(current)),
                                       (parsed_frozen, parsed_current, sample_record(frozen))):
            buffer = io.BytesIO()
            fastavro.schemaless_writer(buffer, writer, record)
            buffer.seek(0)
            fastavro.schemaless_reader(buffer, writer, reader)


def test_json_keeps_every_field_in_canonical_and_relaxed_modes() -> None:
    raw = bson.encode(SAMPLE)
    canonical = json.loads(encode_json(raw))
    assert list(canonical) == list(SAMPLE)
    assert canonical["ts"] == {"$timestamp": {"t": 1700000000, "i": 7}}
    assert canonical["o2"]["_id"] == {"$oid": "65a1b2c3d4e5f60718293a4b"}
    assert canonical["wall"] == {"$date": {"$numberLong": "1704110400000"}}
    assert canonical["txnNumber"] == {"$numberLong": "9"}
    assert canonical["o"]["diff"]["u"]["price"] == {"$numberDecimal": "1.50"}
    assert canonical["ui"]["$binary"]["subType"] == "04"
    assert decode_events(encode_json(raw)) == [bson.decode(raw, codec_options=bson.CodecOptions(
        uuid_representation=bson.binary.UuidRepresentation.UNSPECIFIED))]
    relaxed = json.loads(encode_json(raw, JsonMode.RELAXED))
    assert relaxed["txnNumber"] == 9 and relaxed["wall"] == {"$date": "2024-01-01T12:00:00Z"}


@pytest.mark.parametrize("codec", AVRO_CODECS)
def test_raw_batch_is_a_self_describing_avro_container(codec: str) -> None:
    raw = bson.encode(SAMPLE)
    records = [raw_record((1700000000 << 32) | i, "u", "shop.orders", '{"$oid":"65a1b2c3d4e5f60718293a4b"}',
                          dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), "73:9", raw) for i in range(3)]
    value = encode_raw_batch(records, codec)
    assert sniff(value) is MessageFormat.RAW
    read = list(fastavro.reader(io.BytesIO(value)))
    assert [r["ts"] & 0xFFFFFFFF for r in read] == [0, 1, 2] and read[0]["event"] == raw
    assert len(decode_events(value)) == 3


def test_avro_with_another_schema_and_damaged_values_are_undecodable() -> None:
    other = io.BytesIO()
    fastavro.writer(other, fastavro.parse_schema({"type": "record", "name": "X", "fields": [{"name": "a", "type": "long"}]}),
                    [{"a": 1}])
    good_raw = encode_raw_batch([raw_record(1, "i", "a.b", "1", None, None, bson.encode({"_id": 1}))])
    for value in (other.getvalue(), good_raw[:-10], b'{"op": "i", "ns": ', b"{not json}", b"\x05\x00\x00\x00\x01"):
        with pytest.raises(UndecodableMessage):
            decode_events(value)


def test_topic_templates() -> None:
    assert topics.topic_for("cdc.{db}.{coll}", "shop.order items") == "cdc.shop.order_items"
    assert topics.topic_for("plain", "shop.orders") == "plain"
    with pytest.raises(ValueError):
        topics.validate_template("cdc.{database}")
    with pytest.raises(ValueError):
        topics.topic_for("{db}." + "x" * 260, "a.b")
