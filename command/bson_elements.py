"""Walking a BSON document's elements on its bytes, without decoding values: to sort fields for a comparison
that ignores field order (duplicate names, symbols and other old types stay as they are), and to read one `_id`."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import bson
from bson import CodecOptions
from bson.binary import UuidRepresentation
from bson.codec_options import DatetimeConversion

EXACT = CodecOptions(document_class=dict, tz_aware=True, uuid_representation=UuidRepresentation.UNSPECIFIED,
                     datetime_conversion=DatetimeConversion.DATETIME_MS)


def _element_end(raw: bytes, at: int) -> tuple[int, int, int]:
    """(end of the element name, start of its value, end of its value) for the element at `at`."""
    kind = raw[at]
    name_end = raw.index(b"\x00", at + 1)
    start = name_end + 1
    if kind in FIXED_SIZES:
        return name_end, start, start + FIXED_SIZES[kind]
    if kind in (0x02, 0x0D, 0x0E):
        return name_end, start, start + 4 + _int32(raw, start)
    if kind in (0x03, 0x04, 0x0F):
        return name_end, start, start + _int32(raw, start)
    if kind == 0x05:
        return name_end, start, start + 5 + _int32(raw, start)
    if kind == 0x0B:
        return name_end, start, raw.index(b"\x00", raw.index(b"\x00", start) + 1) + 1
    if kind == 0x0C:
        return name_end, start, start + 4 + _int32(raw, start) + 12
    raise ValueError(f"unknown BSON element type 0x{kind:02x}")


FIXED_SIZES = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16,
               0xFF: 0, 0x7F: 0}


def _int32(raw: bytes, at: int) -> int:
    return int.from_bytes(raw[at:at + 4], "little", signed=True)


def elements(raw: bytes) -> Iterator[tuple[bytes, int, bytes]]:
    """(name, type, whole element bytes) of each element of a document or array, in order."""
    at, end = 4, _int32(raw, 0) - 1
    while at < end:
        name_end, start, stop = _element_end(raw, at)
        yield raw[at + 1:name_end], raw[at], raw[at:stop]
        at = stop


def sorted_fields(raw: bytes, is_array: bool = False) -> bytes:
    parts = []
    for name, kind, element in elements(raw):
        if kind in (0x03, 0x04):
            header = element[:len(name) + 2]
            element = header + sorted_fields(element[len(header):], is_array=kind == 0x04)
        parts.append((name, element))
    if not is_array:
        parts.sort(key=lambda part: part[0])
    body = b"".join(element for _, element in parts)
    return (len(body) + 5).to_bytes(4, "little") + body + b"\x00"


def document_id(raw: bytes) -> Any:
    """The `_id` of a raw document, decoding only that element."""
    for name, _, element in elements(raw):
        if name == b"_id":
            return bson.decode((len(element) + 5).to_bytes(4, "little") + element + b"\x00", EXACT)["_id"]
    raise ValueError("a document without _id")
