"""The wire contract: Avro schemas, their compatibility rule, and the codec for every format."""
from __future__ import annotations

import base64
import datetime as dt
import io
import json
import time
from pathlib import Path

import bson
import fastavro
import pytest
from bson import Binary, DatetimeMS, Decimal128, Int64, ObjectId, Timestamp

from kafkashake.schemas import WIRE_VERSION, topics
from kafkashake.schemas.codec import (AVRO_CODECS, JsonMode, JsonRendering, MessageFormat, UndecodableMessage, decode_events, encode_json,
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


def frozen_copies(name: str) -> dict[int, dict]:
    copies = {int(path.stem.rsplit(".v", 1)[1]): json.loads(path.read_text())
              for path in (SCHEMAS / "compat").glob(f"{name}.v*.avsc")}
    assert copies, "every published schema has a frozen copy"
    return copies


@pytest.mark.parametrize("name", ["raw_batch", "envelope"])
def test_schema_parses_and_stays_compatible_with_every_frozen_copy_of_its_version(name: str) -> None:
    current = json.loads((SCHEMAS / f"{name}.avsc").read_text())
    parsed_current = fastavro.parse_schema(current)
    copies = frozen_copies(name)
    assert current["namespace"] == f"io.kafkashake.v{WIRE_VERSION}" and WIRE_VERSION in copies
    for version, frozen in copies.items():
        assert frozen["namespace"] == f"io.kafkashake.v{version}"
        if version != WIRE_VERSION:
            continue
        parsed_frozen = fastavro.parse_schema(frozen)
        old_names = {f["name"] for f in frozen["fields"]}
        new_fields = [f for f in current["fields"] if f["name"] not in old_names]
        assert old_names <= {f["name"] for f in current["fields"]}, "fields are never removed within a version"
        assert all("default" in f for f in new_fields), "added fields need defaults"
        for writer, reader, record in ((parsed_current, parsed_frozen, sample_record(current)),
                                       (parsed_frozen, parsed_current, sample_record(frozen))):
            buffer = io.BytesIO()
            fastavro.schemaless_writer(buffer, writer, record)
            buffer.seek(0)
            fastavro.schemaless_reader(buffer, writer, reader)


def test_raw_batches_of_every_earlier_version_still_decode() -> None:
    """Topics keep messages of older producers: the consumer reads each record's `event`, whatever its version."""
    event = bson.encode({"op": "i", "ns": "a.b", "ts": Timestamp(5, 6), "o": {"_id": 1}})
    for version, schema in frozen_copies("raw_batch").items():
        record = sample_record(schema)
        record["event"] = event
        buffer = io.BytesIO()
        fastavro.writer(buffer, fastavro.parse_schema(schema), [record])
        assert decode_events(buffer.getvalue())[0]["ts"] == Timestamp(5, 6), f"version {version}"


JS_SAFE_INTEGER = 2**53 - 1


def test_every_number_in_the_current_schemas_fits_in_53_bits() -> None:
    """JavaScript numbers are exact to 2^53, and avsc refuses longer longs by default: raw records hold seconds and
    increments (each under 2^32) and millisecond times, never a packed 64-bit position."""
    raw = bson.encode(SAMPLE)
    record = raw_record(Timestamp(2**32 - 1, 2**32 - 1), "u", "a.b", "1", dt.datetime(9999, 12, 31), "x", raw)
    longs = [value for value in record.values() if isinstance(value, int)]
    assert longs and all(abs(value) <= JS_SAFE_INTEGER for value in longs)
    assert dt.datetime(9999, 12, 31).timestamp() * 1000 < JS_SAFE_INTEGER
    for name in ("raw_batch", "envelope"):
        schema_text = (SCHEMAS / f"{name}.avsc").read_text()
        assert "<< 32" not in schema_text and '"ts"' not in schema_text


def test_a_raw_records_wall_is_utc_whatever_the_producers_local_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """BSON dates decode as naive UTC datetimes; fastavro would take a naive one as local time."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        wall = dt.datetime(2026, 12, 3, 12, 0, 0, 123000)
        for given in (wall, wall.replace(tzinfo=dt.timezone.utc), DatetimeMS(wall.replace(tzinfo=dt.timezone.utc))):
            value = encode_raw_batch([raw_record(Timestamp(1, 1), "i", "a.b", "1", given, None, bson.encode({"_id": 1}))])
            (record,) = fastavro.reader(io.BytesIO(value))
            assert record["wall"] == wall.replace(tzinfo=dt.timezone.utc), given
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_wall_no_reader_can_turn_into_a_date_is_left_out_not_written() -> None:
    """BSON dates beyond year 9999 decode as DatetimeMS; an Avro timestamp that large makes readers refuse the batch."""
    event = bson.encode({"_id": 1})
    for far in (DatetimeMS(2**62), DatetimeMS(-2**63)):
        value = encode_raw_batch([raw_record(Timestamp(1, 1), "i", "a.b", "1", far, None, event)])
        (record,) = fastavro.reader(io.BytesIO(value))
        assert record["wall"] is None and record["event"] == event


def test_json_keeps_every_field_and_type_in_canonical_mode() -> None:
    raw = bson.encode(SAMPLE)
    value, rendering = encode_json(raw)
    canonical = json.loads(value)
    assert rendering is JsonRendering.CANONICAL and list(canonical) == list(SAMPLE)
    assert canonical["ts"] == {"$timestamp": {"t": 1700000000, "i": 7}}
    assert canonical["o2"]["_id"] == {"$oid": "65a1b2c3d4e5f60718293a4b"}
    assert canonical["wall"] == {"$date": {"$numberLong": "1704110400000"}}
    assert canonical["txnNumber"] == {"$numberLong": "9"}
    assert canonical["o"]["diff"]["u"]["price"] == {"$numberDecimal": "1.50"}
    assert canonical["ui"]["$binary"]["subType"] == "04"
    assert decode_events(value) == [bson.decode(raw, codec_options=bson.CodecOptions(
        uuid_representation=bson.binary.UuidRepresentation.UNSPECIFIED))]


def test_relaxed_json_is_used_only_where_it_gives_back_the_same_types() -> None:
    plain = bson.encode({"op": "i", "ns": "a.b", "ts": Timestamp(1, 2), "o": {"_id": 1, "x": 2.5, "s": "t"}})
    value, rendering = encode_json(plain, JsonMode.RELAXED)
    assert rendering is JsonRendering.RELAXED and json.loads(value)["o"]["x"] == 2.5
    with_int64 = bson.encode({"op": "i", "ns": "a.b", "ts": Timestamp(1, 2), "o": {"_id": 1, "n": Int64(7)}})
    value, rendering = encode_json(with_int64, JsonMode.RELAXED)
    assert rendering is JsonRendering.CANONICAL, "relaxed JSON would read Int64 7 back as Int32 7"
    assert bson.encode(decode_events(value, rendering.value, strict_json=True)[0]) == with_int64


LEGAL_LOOKALIKES = [
    {"filter": {"$regex": "^a", "$options": "i"}},
    {"x": {"$oid": "65a1b2c3d4e5f60718293a4b"}},
    {"x": {"$numberLong": "7"}},
    {"x": {"$date": 0}},
    {"x": {"$binary": "AAAA", "$type": "00"}},
    {"x": {"$undefined": True}},
    {"x": {"$minKey": 1}},
]


@pytest.mark.parametrize("document", LEGAL_LOOKALIKES, ids=lambda d: next(iter(next(iter(d.values())))))
@pytest.mark.parametrize("mode", list(JsonMode))
def test_field_names_that_look_like_extended_json_come_back_byte_for_byte(document: dict, mode: JsonMode) -> None:
    event = bson.encode({"op": "i", "ns": "a.b", "ts": Timestamp(1, 2), "o": {"_id": 1, **document}})
    value, rendering = encode_json(event, mode)
    assert rendering is JsonRendering.BSON and json.loads(value) == {
        "kafkashake.bson": {"$binary": {"base64": base64.b64encode(event).decode(), "subType": "00"}}}
    assert bson.encode(decode_events(value, rendering.value, strict_json=True)[0]) == event


def test_json_that_is_not_canonical_is_refused_by_the_consumer_not_replayed_with_other_types() -> None:
    """A version-1 producer's relaxed JSON, or anyone's: plain numbers could have been Int64 or Double."""
    relaxed = b'{"op": "i", "ns": "a.b", "ts": {"$timestamp": {"t": 1, "i": 2}}, "o": {"_id": 1, "n": 7}}'
    with pytest.raises(UndecodableMessage, match="not a canonical Extended JSON"):
        decode_events(relaxed, None, strict_json=True)
    assert decode_events(relaxed)[0]["o"]["n"] == 7, "inspect still shows it"
    lookalike = b'{"op": "i", "ns": "a.b", "ts": {"$timestamp": {"t": 1, "i": 2}}, "o": {"_id": 1, ' \
                b'"f": {"$regex": "^a", "$options": "i"}}}'
    with pytest.raises(UndecodableMessage):
        decode_events(lookalike, None, strict_json=True)
    canonical = encode_json(bson.encode({"op": "i", "ns": "a.b", "ts": Timestamp(1, 2), "o": {"_id": 1}}))[0]
    assert decode_events(canonical, None, strict_json=True)[0]["o"] == {"_id": 1}


@pytest.mark.parametrize("codec", AVRO_CODECS)
def test_raw_batch_is_a_self_describing_avro_container(codec: str) -> None:
    raw = bson.encode(SAMPLE)
    records = [raw_record(Timestamp(1700000000, i), "u", "shop.orders", '{"$oid":"65a1b2c3d4e5f60718293a4b"}',
                          dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), "73:9", raw) for i in range(3)]
    value = encode_raw_batch(records, codec)
    assert sniff(value) is MessageFormat.RAW
    read = list(fastavro.reader(io.BytesIO(value)))
    assert [(r["ts_seconds"], r["ts_increment"]) for r in read] == [(1700000000, i) for i in range(3)]
    assert read[0]["event"] == raw
    assert len(decode_events(value)) == 3


def test_avro_with_another_schema_and_damaged_values_are_undecodable() -> None:
    other = io.BytesIO()
    fastavro.writer(other, fastavro.parse_schema({"type": "record", "name": "X", "fields": [{"name": "a", "type": "long"}]}),
                    [{"a": 1}])
    good_raw = encode_raw_batch([raw_record(Timestamp(1, 1), "i", "a.b", "1", None, None, bson.encode({"_id": 1}))])
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
