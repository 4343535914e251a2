"""Message keys and partitions, exactly as a third party can recompute them.

Key bytes (UTF-8):
- `id` mode:         `<db>.<coll>` + `\\x00` + the `_id` as key text (change streams: the `documentKey`; events
                     without a document, such as DDL, use the `collection` key): compact canonical Extended JSON in
                     which every number is `{"$number":"<value>"}`, written by value (see `key_text`), because
                     MongoDB holds Int32 7, Int64 7, Double 7.0 and Decimal128 7 to be one `_id`
                     (e.g. `shop.orders\\x00{"$oid":"65a1..."}`, `shop.orders\\x00{"$number":"7"}`)
- `collection` mode: `<db>.<coll>`
- `database` mode:   `<db>`
Partition: Kafka's default partitioner for keyed messages, `(murmur2(key) & 0x7fffffff) % partitions`,
as the Java client and librdkafka's `murmur2_random` compute it."""
from __future__ import annotations

import decimal
import enum
import json
import struct
from collections.abc import Mapping
from typing import Any

from bson import Decimal128, Int64, ObjectId, json_util
from murmurhash2 import murmurhash2 as _murmur2_unsigned  # murmur2() below in C, ~15x faster

_CANONICAL = json_util.JSONOptions(json_mode=json_util.JSONMode.CANONICAL)
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_WORDS = struct.Struct("<I")
_SEED = 0x9747B28C


class PartitionBy(str, enum.Enum):
    ID = "id"
    COLLECTION = "collection"
    DATABASE = "database"


def canonical_json(value: Any) -> str:
    """Compact canonical Extended JSON v2 of one BSON value. The common `_id` types take a fast path that
    yields exactly what `bson.json_util` would."""
    kind = type(value)
    if kind is ObjectId:
        return f'{{"$oid":"{value}"}}'
    if kind is int:
        return f'{{"$numberInt":"{value}"}}' if _INT32_MIN <= value <= _INT32_MAX else f'{{"$numberLong":"{value}"}}'
    if kind is Int64:
        return f'{{"$numberLong":"{int(value)}"}}'
    if kind is str:
        return json.dumps(value)
    return json_util.dumps(value, json_options=_CANONICAL, separators=(",", ":"))


# Exact: a double's binary value has up to 767 significant decimal digits, a Decimal128 up to 34 in a wide range.
_EXACT = decimal.Context(prec=6200, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


def number_text(value: int | float | Decimal128) -> str:
    """A number as MongoDB compares it, by value whatever its BSON type: integral values as integers (`7`, `-3`,
    `100`), others as their exact decimal expansion without trailing zeros (`0.5`,
    `0.1000000000000000055511151231257827021181583404541015625` for the double 0.1); `NaN`, `Infinity`,
    `-Infinity`. -0 is `0`."""
    if isinstance(value, int):
        return str(int(value))
    exact = value.to_decimal() if isinstance(value, Decimal128) else decimal.Decimal(value)
    if exact.is_nan():
        return "NaN"
    if exact.is_infinite():
        return "-Infinity" if exact < 0 else "Infinity"
    if exact == exact.to_integral_value(context=_EXACT):
        return str(int(exact))
    return format(exact.normalize(_EXACT), "f")


def key_text(value: Any) -> str:
    """The `_id` (or `documentKey`) as partition key text: compact canonical Extended JSON, except that every
    number, at any depth, is `{"$number":"<number_text>"}`. Values MongoDB holds equal give the same text."""
    kind = type(value)
    if kind is ObjectId:
        return f'{{"$oid":"{value}"}}'
    if kind is str:
        return json.dumps(value)
    if kind is int or kind is Int64 or kind is float or kind is Decimal128:
        return f'{{"$number":"{number_text(value)}"}}'
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{json.dumps(name)}:{key_text(item)}" for name, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(key_text(item) for item in value) + "]"
    return canonical_json(value)


def message_key(mode: PartitionBy, ns: str, document_id: Any) -> bytes:
    """`document_id` is None for events that touch no single document (DDL): they are keyed by namespace."""
    if mode is PartitionBy.ID and document_id is not None:
        return f"{ns}\x00{key_text(document_id)}".encode()
    if mode is PartitionBy.COLLECTION:
        return ns.encode()
    return ns.partition(".")[0].encode()


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (seed 0x9747b28c), as a signed 32-bit integer like Java's `Utils.murmur2`. The readable
    reference for third parties; `partition_for` computes the same hash with the `murmurhash2` C extension."""
    m = 0x5BD1E995
    length = len(data)
    h = (_SEED ^ length) & 0xFFFFFFFF
    end = length - (length % 4)
    for (k,) in _WORDS.iter_unpack(data[:end]):
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length % 4
    if tail == 3:
        h ^= data[end + 2] << 16
    if tail >= 2:
        h ^= data[end + 1] << 8
    if tail >= 1:
        h ^= data[end]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - 0x100000000 if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    return (_murmur2_unsigned(key, _SEED) & 0x7FFFFFFF) % partitions
