"""Encoding events into message values and decoding any message value back into events.

A value is recognised by its bytes, so messages decode with or without headers:
- `Obj\\x01` magic: an Avro Object Container File (the `raw` format).
- first four bytes (int32 little-endian) equal to the value's length and a final `0x00`: one BSON document.
  This test comes before the JSON test: one BSON document in 256 starts with `{` (length byte 123).
- otherwise a first non-space `{`: one Extended JSON document.
Anything else is undecodable."""
from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from typing import Any

import bson
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions, DatetimeConversion

AVRO_MAGIC = b"Obj\x01"

EVENT_CODEC_OPTIONS: CodecOptions = CodecOptions(
    document_class=dict,
    uuid_representation=UuidRepresentation.UNSPECIFIED,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
)


class MessageFormat(str, enum.Enum):
    RAW = "raw"
    JSON = "json"
    BSON = "bson"


class UndecodableMessage(ValueError):
    """A message value that is none of our formats, or is one of them but damaged."""


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


def decode_events(value: bytes | None) -> list[dict[str, Any]]:
    """Every event a message value holds, as dicts in BSON field order."""
    message_format = sniff(value)
    assert value is not None
    if message_format is MessageFormat.BSON:
        try:
            return [bson.decode(value, codec_options=EVENT_CODEC_OPTIONS)]
        except Exception as exc:  # bson raises several types for damaged input
            raise UndecodableMessage(f"damaged BSON: {exc}") from exc
    raise UndecodableMessage(f"the {message_format.value} format is not supported by this version")


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
