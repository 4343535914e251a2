"""From Kafka messages to received messages: fragments put back together, values decoded into events.

A received message is one whole value: one Kafka message, or the fragments of one (schemas/fragments.py). It keeps
the offsets of its first and last Kafka message, so the consumer can rewind to its start and checkpoint past its end.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

import bson
from bson.timestamp import Timestamp

from kafkashake.consumer.decoder import Event, UndecodableMessage, decode_message
from kafkashake.schemas import fragments, headers
from kafkashake.schemas.codec import EVENT_CODEC_OPTIONS
from kafkashake.schemas.heartbeats import Heartbeat, heartbeat_of

PartitionKey = tuple[str, int]


class KafkaMessage(Protocol):
    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> list[tuple[str, bytes]] | None: ...


# Consecutive messages carry the same watermark: parsed once, compared by identity.
_watermark = lru_cache(maxsize=64)(headers.parse_position)


@dataclass
class Received:
    """One whole message value of one partition, with what the consumer needs to apply, hold or dead-letter it."""

    topic: str
    partition: int
    first_offset: int
    offset: int
    key: bytes | None
    value: bytes | None
    raw_headers: list[tuple[str, bytes]]
    headers: dict[str, str]
    events: list[Event] = field(default_factory=list)
    error: str | None = None

    @property
    def where(self) -> PartitionKey:
        return self.topic, self.partition

    @property
    def watermark(self) -> Timestamp | None:
        text = self.headers.get(headers.WATERMARK)
        return _watermark(text) if text else None

    @property
    def ts(self) -> Timestamp | None:
        """The source position of its last event that has one."""
        for event in reversed(self.events):
            ts = event.fields.get("ts")
            if isinstance(ts, Timestamp):
                return ts
        return None

    @property
    def heartbeat(self) -> Heartbeat | None:
        if self.headers.get(headers.HEARTBEAT) != "true" or len(self.events) != 1:
            return None
        return heartbeat_of(self.events[0].fields)

    def describe(self) -> str:
        span = f"{self.first_offset}-{self.offset}" if self.first_offset != self.offset else str(self.offset)
        return f"{self.topic}/{self.partition}@{span}"


def _received(message: KafkaMessage, value: bytes | None, first_offset: int,
              message_headers: dict[str, str]) -> Received:
    raw_headers = [(name, data) for name, data in message.headers() or [] if name not in fragments.FRAGMENT_HEADERS]
    return Received(message.topic(), message.partition(), first_offset, message.offset(), message.key(), value,
                    raw_headers, {k: v for k, v in message_headers.items() if k not in fragments.FRAGMENT_HEADERS})


class Intake:
    """Keeps each partition's fragments until its value is whole."""

    def __init__(self) -> None:
        self._reassemblies: dict[PartitionKey, fragments.Reassembly] = {}

    def pending_from(self, where: PartitionKey) -> int | None:
        """Offset of the first fragment of a value this partition has not completed, if any."""
        reassembly = self._reassemblies.get(where)
        return None if reassembly is None else reassembly.first_offset

    def forget(self, where: PartitionKey) -> None:
        self._reassemblies.pop(where, None)

    def take(self, message: KafkaMessage) -> Received | None:
        """The received message, with its events or its decoding error; None while fragments are missing."""
        message_headers = headers.as_dict(message.headers())
        where = (message.topic(), message.partition())
        value, first_offset = message.value(), message.offset()
        reassembly = self._reassemblies.setdefault(where, fragments.Reassembly())
        if fragments.is_fragment(message_headers):
            try:
                whole = reassembly.add(message_headers, value or b"", message.offset())
            except fragments.FragmentError as exc:
                received = _received(message, value, first_offset, message_headers)
                received.raw_headers = list(message.headers() or [])
                received.error = f"incomplete fragments: {exc}"
                return received
            if whole is None:
                return None
            value, first_offset = whole.value, whole.first_offset
        else:
            reassembly.interrupted()
        received = _received(message, value, first_offset, message_headers)
        try:
            received.events = decode_message(value, received.topic, received.partition, received.offset,
                                             message_headers)
        except UndecodableMessage as exc:
            received.error = str(exc)
        if first_offset != received.offset:
            for event in received.events:
                event.first_offset = first_offset
        return received


def message_of(messages: list[Received], event: Event) -> Received:
    """The message an event came in (for a dead letter): among `messages`, or else (held since an earlier batch)
    one made from the event."""
    for received in messages:
        if received.where == event.where and received.offset == event.offset:
            return received
    return Received(event.topic, event.partition, event.offset, event.offset, None,
                    bson.encode(event.fields, codec_options=EVENT_CODEC_OPTIONS), [], {}, [event])
