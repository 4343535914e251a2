"""From Kafka messages to events: one message holds one event (bson, json) or a batch (raw).
Change-stream events are turned into oplog form, and a received `applyOps` entry is unwound here."""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

from kafkashake.consumer.change_events import is_change_event, to_oplog_form
from kafkashake.oplog.transactions import unwind
from kafkashake.schemas import headers
from kafkashake.schemas.codec import UndecodableMessage, check_event, decode_events


@dataclass(slots=True)
class Event:
    """One operation to replay, with the Kafka position it came from."""

    fields: dict[str, Any]
    topic: str
    partition: int
    offset: int
    # Position of the event inside its message (raw batches and unwound transactions hold several).
    index: int = 0
    # Applied as mongod's initial sync applies the oplog over a copy: inserts insert-or-replace, an update of a
    # missing document is passed over. Snapshot documents, and changes that overlap the copy.
    converge: bool = False
    # Applied before, by this group (read again after a restart or a rebalance): applied the same convergent way.
    replayed: bool = False
    # Where its message begins, when the message came in fragments over several offsets.
    first_offset: int | None = None

    @property
    def where(self) -> tuple[str, int]:
        return self.topic, self.partition

    @property
    def message_start(self) -> int:
        return self.offset if self.first_offset is None else self.first_offset

    @property
    def position(self) -> tuple[int, int]:
        return self.offset, self.index

    @property
    def op(self) -> str:
        return self.fields["op"]

    @property
    def ns(self) -> str:
        return self.fields["ns"]


def decode_message(value: bytes | None, topic: str, partition: int, offset: int,
                   message_headers: Mapping[str, str] | None = None) -> list[Event]:
    events: list[Event] = []
    rendering = (message_headers or {}).get(headers.JSON_RENDERING)
    for fields in decode_events(value, rendering, strict_json=True):
        if is_change_event(fields):
            fields = to_oplog_form(fields)
        check_event(fields)
        command = fields.get("o") if fields.get("op") == "c" else None
        if isinstance(command, dict) and "applyOps" in command:
            for inner in unwind(fields, command["applyOps"], fields["ts"]):
                check_event(inner)
                events.append(Event(inner, topic, partition, offset, len(events)))
        else:
            events.append(Event(fields, topic, partition, offset, len(events)))
    return events


__all__ = ["Event", "UndecodableMessage", "decode_message"]
