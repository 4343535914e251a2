"""Converging changes whose final state a unique index refused, kept until a later change lets it in.

A copy is fuzzy: it may read document X before a change moves X's unique value to Y, and Y after it, so two copied
documents hold one value until the changes overlapping the copy are applied. A replayed window of another instance's
partitions can do the same. Such a refused state is parked: its events are written again, first, with every later
batch (`Applier.write`), where the document's later changes apply onto them and the change that frees the value may
have come. Once a change that does not converge follows in its collection, its topic is written past the copy's
overlap, or its partition waits at the exit point (`closing`), the window is over and a refusal is a conflict; a DDL
that drops or renames its collection gives it a last try too (`closing_namespaces`) before the DDL applies. A DDL
that keeps the collection's documents applies while they stay parked. Until then the checkpoint of the parked
events' partition stays before them (`before_parked`), so a restart reads them again."""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping

from kafkashake.consumer.checkpoint import PartitionPosition
from kafkashake.consumer.decoder import Event
from kafkashake.consumer.intake import PartitionKey
from kafkashake.oplog.namespaces import command_target

DROPPING_COMMANDS = frozenset({"drop", "dropDatabase", "renameCollection"})


class ParkedWrites:
    """Parked events by destination namespace and document key, in the order they were parked. Lanes of different
    namespaces park from their own threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_document: dict[tuple[str, str], list[Event]] = {}
        self._carried: set[tuple[str, str]] = set()
        # Partitions, and namespaces (`touches`), whose parked events are written one last time: refused, a conflict.
        self.closing: frozenset[PartitionKey] = frozenset()
        self.closing_namespaces: frozenset[str] = frozenset()

    def may_park(self, event: Event) -> bool:
        return event.where not in self.closing and not touches(event.ns, self.closing_namespaces)

    def park(self, ns: str, key: str, events: list[Event]) -> bool:
        """Whether the document was not parked before the write now running."""
        with self._lock:
            self._by_document[(ns, key)] = events
            return (ns, key) not in self._carried

    def take(self) -> dict[tuple[str, str], list[Event]]:
        """Every parked document's events, no longer parked: the write about to start carries them."""
        with self._lock:
            taken, self._by_document = self._by_document, {}
            self._carried = set(taken)
        return taken

    def put_back(self, taken: dict[tuple[str, str], list[Event]]) -> None:
        """A write that carried `taken` failed: what it parked goes (it is written again whole), `taken` stays."""
        with self._lock:
            self._by_document = dict(taken)

    def events(self) -> list[Event]:
        with self._lock:
            return [event for events in self._by_document.values() for event in events]

    def drop(self, where: PartitionKey) -> None:
        """The partition went to another owner, which reads its parked events again from the checkpoint."""
        with self._lock:
            self._by_document = {document: events for document, events in self._by_document.items()
                                 if events[0].where != where}


def dropped_namespaces(events: list[Event]) -> set[str]:
    """The namespaces (`db.coll`, or `db` for a database) whose documents these DDL events drop or move away."""
    return {command_target(event.ns, event.fields["o"]) for event in events
            if event.op == "c" and isinstance(event.fields.get("o"), Mapping) and event.fields["o"]
            and next(iter(event.fields["o"])) in DROPPING_COMMANDS}


def touches(ns: str, namespaces: frozenset[str]) -> bool:
    return ns in namespaces or ns.partition(".")[0] in namespaces


def first_parked(events: list[Event]) -> dict[PartitionKey, Event]:
    firsts: dict[PartitionKey, Event] = {}
    for event in events:
        first = firsts.get(event.where)
        if first is None or event.position < first.position:
            firsts[event.where] = event
    return firsts


def before_parked(saved: PartitionPosition, first: Event | None) -> PartitionPosition:
    """The checkpoint held before the partition's first parked event: read again after a restart, it is replayed."""
    if first is None:
        return saved
    offset = min(saved.offset, first.message_start - 1)
    done = saved.done_through
    if done is not None and done >= first.position:
        done = (first.offset, first.index - 1)
    return dataclasses.replace(saved, offset=offset, done_through=done)
