"""Encoding events into message values and decoding any message value back into events.

Formats (see docs/formats.md):
- `bson`: one event per message, its BSON exactly as read.
- `json`: one event per message, MongoDB Extended JSON v2 (canonical by default, or relaxed), UTF-8.
- `raw`: a batch of events per message, as an Avro Object Container File whose records follow
  `schemas/raw_batch.avsc`; each record carries the event's BSON.

A value is recognised by its bytes, so messages decode with or without headers:
- `Obj\\x01` magic: Avro Object Container File (`raw`).
- first four bytes (int32 little-endian) equal to the value's length and a final `0x00`: one BSON document.
  This test comes before the JSON test: one BSON document in 256 starts with `{` (length byte 123).
- otherwise a first non-space `{`: one Extended JSON document.
Anything else is undecodable."""
from __future__ import annotations

import datetime as _dt
import enum
import io
import json
import re
import struct
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

import bson
import bsonjs
import fastavro
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.timestamp import Timestamp

AVRO_MAGIC = b"Obj\x01"
RAW_BATCH_SCHEMA_FILE = "raw_batch.avsc"
ENVELOPE_SCHEMA_FILE = "envelope.avsc"
AVRO_CODECS = ("null", "deflate", "snappy", "zstandard")

EVENT_CODEC_OPTIONS: CodecOptions = CodecOptions(
    document_class=dict,
    uuid_representation=UuidRepresentation.UNSPECIFIED,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
)


class MessageFormat(str, enum.Enum):
    RAW = "raw"
    JSON = "json"
    BSON = "bson"


class JsonMode(str, enum.Enum):
    CANONICAL = "canonical"
    RELAXED = "relaxed"


class UndecodableMessage(ValueError):
    """A message value that is none of our formats, or is one of them but damaged."""


# -------------------------------------------------------------------------------------------------- schemas


def schema_text(file_name: str) -> str:
    return resources.files("kafkashake.schemas").joinpath(file_name).read_text()


@cache
def raw_batch_schema() -> Any:
    """The parsed raw-batch record schema, loaded from `schemas/raw_batch.avsc` (the single source of truth)."""
    return fastavro.parse_schema(json.loads(schema_text(RAW_BATCH_SCHEMA_FILE)))


def avro_codec_available(codec: str) -> bool:
    try:
        fastavro.writer(io.BytesIO(), raw_batch_schema(), [], codec=codec)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------------- encoding


class JsonRendering(str, enum.Enum):
    """How one json message renders its event; every rendering gives back the event's exact BSON."""

    CANONICAL = "canonical"
    RELAXED = "relaxed"
    # The event as BSON bytes inside Extended JSON: `{"kafkashake.bson": {"$binary": ...}}`.
    BSON = "bson"


WRAPPED_BSON_FIELD = "kafkashake.bson"
# Field names that an Extended JSON parser reads as a type wrapper. A document with such a field name (legal in
# MongoDB 5.0+) may not survive the trip through JSON; events holding one are checked by a full round trip.
_WRAPPER_NAMES = re.compile(rb"\$(?:oid|date|number(?:Long|Int|Double|Decimal)|binary|type|regex|options|"
                            rb"regularExpression|timestamp|code|scope|symbol|minKey|maxKey|undefined|dbPointer|uuid|"
                            rb"ref|id|db)\x00")


def _round_trips(text: str, event_bson: bytes) -> bool:
    try:
        return bsonjs.loads(text) == event_bson
    except Exception:  # noqa: BLE001 - libbson refuses some renderings outright
        return False


def encode_json(event_bson: bytes, mode: JsonMode = JsonMode.CANONICAL) -> tuple[bytes, JsonRendering]:
    """Extended JSON v2 of one event (converted in C by python-bsonjs, about 6x `bson.json_util`), and the rendering
    used: the mode asked for if its JSON gives back the exact BSON, else canonical if that does, else the BSON
    itself wrapped in Extended JSON. Relaxed JSON turns small Int64s into plain numbers that read back as Int32;
    field names like `$regex` or `$oid` read back as a Regex or an ObjectId."""
    if mode is JsonMode.RELAXED:
        text = bsonjs.dumps(event_bson, mode=bsonjs.RELAXED)
        if _round_trips(text, event_bson):
            return text.encode(), JsonRendering.RELAXED
    text = bsonjs.dumps(event_bson, mode=bsonjs.CANONICAL)
    if not _WRAPPER_NAMES.search(event_bson) or _round_trips(text, event_bson):
        return text.encode(), JsonRendering.CANONICAL
    wrapped = bson.encode({WRAPPED_BSON_FIELD: bson.Binary(event_bson)})
    return bsonjs.dumps(wrapped, mode=bsonjs.CANONICAL).encode(), JsonRendering.BSON


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


# The dates an Avro reader turns back into a datetime: years 1 to 9999.
_READABLE_MILLIS = range(-62_135_596_800_000, 253_402_300_800_000)


def epoch_millis(wall: _dt.datetime | bson.DatetimeMS) -> int | None:
    """A BSON date as milliseconds since the epoch. A naive datetime is UTC, as every BSON date is (fastavro would
    read it as the host's local time). None for a date outside years 1-9999, which Avro readers refuse as a
    timestamp (the event's BSON still holds it exactly)."""
    if not isinstance(wall, _dt.datetime):
        return int(wall) if int(wall) in _READABLE_MILLIS else None
    delta = (wall if wall.tzinfo is not None else wall.replace(tzinfo=_dt.timezone.utc)) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def raw_record(ts: Timestamp, op: str, ns: str, document_id: str | None, wall: _dt.datetime | None,
               txn: str | None, event_bson: bytes) -> dict[str, Any]:
    return {"ts_seconds": ts.time, "ts_increment": ts.inc, "op": op, "ns": ns, "document_id": document_id,
            "wall": None if wall is None else epoch_millis(wall), "txn": txn, "event": event_bson}


def encode_raw_batch(records: Iterable[Mapping[str, Any]], codec: str = "null") -> bytes:
    """One Avro Object Container File holding `records` (see `raw_record`)."""
    buffer = io.BytesIO()
    fastavro.writer(buffer, raw_batch_schema(), records, codec=codec)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------- decoding


def sniff(value: bytes | None) -> MessageFormat:
    if not value:
        raise UndecodableMessage("empty message value")
    if value.startswith(AVRO_MAGIC):
        return MessageFormat.RAW
    if len(value) >= 5 and struct.unpack_from("<i", value)[0] == len(value) and value[-1] == 0:
        return MessageFormat.BSON
    if value.lstrip()[:1] == b"{":
        return MessageFormat.JSON
    raise UndecodableMessage(f"value of {len(value)} bytes starting {value[:8]!r} is not raw (Avro), bson or json")


def _decode_bson(value: bytes) -> dict[str, Any]:
    try:
        return bson.decode(value, codec_options=EVENT_CODEC_OPTIONS)
    except Exception as exc:  # bson raises several types for damaged input
        raise UndecodableMessage(f"damaged BSON: {exc}") from exc


def _decode_json(value: bytes, rendering: str | None, strict: bool) -> dict[str, Any]:
    try:
        text = value.decode("utf-8")
        event = _decode_bson(bsonjs.loads(text))
    except UndecodableMessage:
        raise
    except Exception as exc:
        raise UndecodableMessage(f"not an Extended JSON document: {exc}") from exc
    wrapped = event.get(WRAPPED_BSON_FIELD) if len(event) == 1 else None
    if isinstance(wrapped, bytes):
        return _decode_bson(bytes(wrapped))
    if strict and rendering is None and not _canonical_again(text, event):
        raise UndecodableMessage(
            "this JSON is not a canonical Extended JSON rendering of its event (relaxed JSON, or field names that "
            "read as type wrappers), so replaying it could change BSON types; kafkashake producers since wire "
            "version 2 send only JSON that gives back the exact BSON")
    return event


def _canonical_again(text: str, event: dict[str, Any]) -> bool:
    """Whether `text` is what canonical Extended JSON of the decoded event would be (up to whitespace)."""
    again = bsonjs.dumps(bson.encode(event, codec_options=EVENT_CODEC_OPTIONS), mode=bsonjs.CANONICAL)
    try:
        return json.loads(text) == json.loads(again)
    except ValueError:
        return False


def _decode_raw(value: bytes) -> list[dict[str, Any]]:
    try:
        reader = fastavro.reader(io.BytesIO(value))
        writer_fields = {field["name"] for field in reader.writer_schema.get("fields", [])}
        if "event" not in writer_fields:
            raise UndecodableMessage("Avro container whose schema has no 'event' field is not a kafkashake raw batch")
        return [_decode_bson(record["event"]) for record in reader]
    except UndecodableMessage:
        raise
    except Exception as exc:
        raise UndecodableMessage(f"damaged Avro container: {exc}") from exc


def decode_events(value: bytes | None, json_rendering: str | None = None,
                  strict_json: bool = False) -> list[dict[str, Any]]:
    """Every event a message value holds, as dicts in BSON field order. `json_rendering` is the message's
    `kafkashake.json` header; with `strict_json`, JSON without it must be canonical Extended JSON that gives back
    the same JSON, or it is undecodable rather than replayed with types it may have lost."""
    message_format = sniff(value)
    assert value is not None
    if message_format is MessageFormat.BSON:
        return [_decode_bson(value)]
    if message_format is MessageFormat.JSON:
        return [_decode_json(value, json_rendering, strict_json)]
    return _decode_raw(value)


def check_event(event: Mapping[str, Any]) -> None:
    """An event must say what it is, where it belongs, and which document it touches."""
    for name in ("op", "ns", "ts"):
        if name not in event:
            raise UndecodableMessage(f"event has no {name!r} field")
    op = event["op"]
    if op in ("i", "d") and not (isinstance(event.get("o"), Mapping) and "_id" in event["o"]):
        raise UndecodableMessage(f"{op!r} event on {event['ns']} has no o._id")
    if op == "u" and not (
        isinstance(event.get("o2"), Mapping) and "_id" in event["o2"] and isinstance(event.get("o"), Mapping)
    ):
        raise UndecodableMessage(f"update event on {event['ns']} has no o2._id or no o")
