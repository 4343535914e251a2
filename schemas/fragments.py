"""Fragments: a message value larger than its topic allows travels as several consecutive messages.

A MongoDB change can be 16 MB (its JSON larger), and Apache Kafka refuses messages above the topic's
`max.message.bytes` (1 MiB by default). The producer cuts such a value into slices that fit, and sends them
one after another to the change's partition, each with the message's usual key and headers plus:

| header | value |
|---|---|
| `kafkashake.fragment.id` | the same random id on every fragment of one value |
| `kafkashake.fragment.index` | 0, 1, ... |
| `kafkashake.fragment.count` | how many fragments the value has |
| `kafkashake.fragment.size` | the whole value's length in bytes |
| `kafkashake.fragment.sha256` | hex SHA-256 of the whole value |

Reassembly: concatenate the values of fragments 0 .. count-1 of one id, in offset order; check the length and the
digest; decode the result as any message value. Fragments of one value are consecutive in their partition. If a
fragment 0 arrives before the previous value's fragments are complete, the producer was restarted mid-value and
sends that value again in full later: drop the incomplete one. A consumer must not commit an offset past the first
fragment of a value it has not yet reassembled (kafkashake's consumer does not)."""
from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

FRAGMENT_ID = "kafkashake.fragment.id"
FRAGMENT_INDEX = "kafkashake.fragment.index"
FRAGMENT_COUNT = "kafkashake.fragment.count"
FRAGMENT_SIZE = "kafkashake.fragment.size"
FRAGMENT_SHA256 = "kafkashake.fragment.sha256"
FRAGMENT_HEADERS = (FRAGMENT_ID, FRAGMENT_INDEX, FRAGMENT_COUNT, FRAGMENT_SIZE, FRAGMENT_SHA256)


def split(value: bytes, slice_bytes: int) -> Iterator[tuple[bytes, list[tuple[str, bytes]]]]:
    """The fragments of `value`, each at most `slice_bytes` long, with their fragment headers."""
    if slice_bytes <= 0:
        raise ValueError("a fragment must be able to hold at least one byte")
    count = -(-len(value) // slice_bytes)
    common = [(FRAGMENT_ID, uuid.uuid4().hex.encode()), (FRAGMENT_COUNT, str(count).encode()),
              (FRAGMENT_SIZE, str(len(value)).encode()),
              (FRAGMENT_SHA256, hashlib.sha256(value).hexdigest().encode())]
    view = memoryview(value)
    for index in range(count):
        yield bytes(view[index * slice_bytes:(index + 1) * slice_bytes]), [*common, (FRAGMENT_INDEX, str(index).encode())]


def bound_headers() -> list[tuple[str, bytes]]:
    """Fragment headers at their largest, for sizing fragments."""
    return [(FRAGMENT_ID, b"x" * 32), (FRAGMENT_COUNT, b"x" * 8), (FRAGMENT_SIZE, b"x" * 12),
            (FRAGMENT_SHA256, b"x" * 64), (FRAGMENT_INDEX, b"x" * 8)]


def is_fragment(message_headers: Mapping[str, str]) -> bool:
    return FRAGMENT_INDEX in message_headers


class FragmentError(ValueError):
    """Fragments that cannot be put back together: missing ones, or a whole that fails its checks."""


@dataclass
class _Value:
    fragment_id: str
    count: int
    size: int
    digest: str
    first_offset: int
    parts: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class Reassembled:
    value: bytes
    first_offset: int


class Reassembly:
    """One partition's fragments, in offset order, back into whole values."""

    def __init__(self) -> None:
        self._pending: _Value | None = None
        self.abandoned = 0

    @property
    def first_offset(self) -> int | None:
        """Offset of the first fragment of the value being reassembled, if one is."""
        return None if self._pending is None else self._pending.first_offset

    def interrupted(self) -> bool:
        """A message that is not a fragment arrived: a value left incomplete is dropped (it is sent again).
        Returns whether one was."""
        dropped = self._pending is not None
        if dropped:
            self.abandoned += 1
        self._pending = None
        return dropped

    def add(self, message_headers: Mapping[str, str], value: bytes, offset: int) -> Reassembled | None:
        """Take one fragment; returns the whole value once its last fragment arrived."""
        try:
            index, count = int(message_headers[FRAGMENT_INDEX]), int(message_headers[FRAGMENT_COUNT])
            size, digest = int(message_headers[FRAGMENT_SIZE]), message_headers[FRAGMENT_SHA256]
            fragment_id = message_headers[FRAGMENT_ID]
        except (KeyError, ValueError) as exc:
            raise FragmentError(f"fragment headers are incomplete or malformed: {exc}") from exc
        if index == 0:
            self.interrupted()
            self._pending = _Value(fragment_id, count, size, digest, offset)
        pending = self._pending
        if pending is None or pending.fragment_id != fragment_id or len(pending.parts) != index:
            self._pending = None
            raise FragmentError(f"fragment {index} of {count} (id {fragment_id}) arrived without the fragments "
                                "before it: they were deleted from the topic (retention) or the consumer was moved "
                                "into the middle of a fragmented value")
        pending.parts.append(value)
        if len(pending.parts) < count:
            return None
        self._pending = None
        whole = b"".join(pending.parts)
        if len(whole) != size or hashlib.sha256(whole).hexdigest() != digest:
            raise FragmentError(f"fragments of {fragment_id} reassemble into {len(whole)} bytes that fail their "
                                f"size ({size}) or SHA-256 check")
        return Reassembled(whole, pending.first_offset)
