"""What the consumer knows about each partition it owns: where it is applied to, the producer's watermark it has
reached, whether it was read to its end, and the lag that follows from them."""
from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass

from bson.timestamp import Timestamp

from kafkashake.consumer.checkpoint import PartitionPosition, WriteAhead
from kafkashake.consumer.decoder import Event
from kafkashake.oplog import position
from kafkashake.consumer.delay import source_time
from kafkashake.consumer.intake import PartitionKey, Received
from kafkashake.consumer.sequencer import FirstHeld
from kafkashake.schemas.heartbeats import Heartbeat

# A heartbeat counts as fresh for this many of its intervals, plus a second.
FRESH_HEARTBEAT_INTERVALS = 2.0


@dataclass
class PartitionState:
    topic_id: str | None = None
    # The last message read and passed through (applied, held by the sequencer, or moved past): its offset and its
    # newest change's source time.
    offset: int | None = None
    ts: Timestamp | None = None
    snapshot_until: Timestamp | None = None
    # Every change of this partition at or before it is applied or held here: the producer's watermark, and the
    # source order of a partition (all changes before one it has read precede it).
    complete_through: Timestamp | None = None
    in_sync_as_of: _dt.datetime | None = None
    # The newest event (offset, index) applied; events at or before `replay_through` were applied by this group
    # before a restart or rebalance and apply convergently when read again.
    applied_events_through: tuple[int, int] | None = None
    replay_through: tuple[int, int] | None = None
    # Every event at or before it is applied (none is held before it): read again, such events are skipped. Applied
    # again, an old change of a collection with a unique index could collide with a newer document's value.
    done_through: tuple[int, int] | None = None
    skip_through: tuple[int, int] | None = None
    applied_here: tuple[int, int] | None = None  # the newest event applied since this instance took the partition
    # The offset of the first message this instance read from the partition, and the newest event a saved
    # write-ahead mark covers.
    first_read: int | None = None
    marked_through: tuple[int, int] | None = None
    # Its replay window, restored with it, is still to be read to its end before anything is gated.
    window_unread: bool = False
    changed: bool = False
    at_end: bool = False
    # The newest source time up to which every change of this partition is applied (seconds since the epoch).
    complete_as_of: float | None = None
    heartbeat: Heartbeat | None = None
    heartbeat_received_at: float | None = None
    last_was_heartbeat: bool = False

    @property
    def watermark(self) -> Timestamp | None:
        return self.complete_through

    def restore(self, saved: PartitionPosition | None) -> None:
        if saved is None:
            return
        self.offset, self.ts, self.snapshot_until = saved.offset, saved.ts, saved.snapshot_until
        self.complete_through, self.in_sync_as_of = saved.watermark, saved.in_sync_as_of
        for applied in (saved.applied_through, saved.writing_through):
            if applied is not None and applied[0] > saved.offset and (
                    self.replay_through is None or applied > self.replay_through):
                self.replay_through = self.applied_events_through = applied
                self.window_unread = True
        self.marked_through = saved.writing_through
        if saved.done_through is not None and saved.done_through[0] > saved.offset:
            self.skip_through = self.done_through = saved.done_through
        times = [saved.ts.time if saved.ts is not None else None,
                 saved.in_sync_as_of.replace(tzinfo=_dt.timezone.utc).timestamp() if saved.in_sync_as_of else None]
        self.complete_as_of = max((t for t in times if t is not None), default=None)

    def reading(self, first_offset: int) -> None:
        self.at_end = False
        if self.first_read is None:
            self.first_read = first_offset

    def mark_replayed(self, received: Received) -> int:
        """Events this group applied before (beyond the checkpoint's offset): those before the first it had not
        applied are left out, the others applied convergently again. Returns how many were left out."""
        skipped = 0
        if self.skip_through is not None:
            kept = [event for event in received.events if event.position > self.skip_through]
            skipped = len(received.events) - len(kept)
            received.events = kept
        if self.replay_through is not None:
            for event in received.events:
                if event.position <= self.replay_through:
                    event.replayed = True
        return skipped

    def _past_replay(self, offset: int) -> None:
        """A message went through: what was applied before it no longer needs telling apart (a message held back
        and read again is still told apart)."""
        if self.skip_through is not None and offset >= self.skip_through[0]:
            self.skip_through = None
        if self.replay_through is not None and offset >= self.replay_through[0]:
            self.replay_through = None

    def _complete(self, through: Timestamp | None) -> None:
        if through is not None and through is not self.complete_through and (
                self.complete_through is None or through > self.complete_through):
            self.complete_through = through
            self.changed = True

    def waiting_at(self, first_offset: int) -> None:
        """The partition waits at the message beginning there: every message before it went through."""
        if self.offset is None:
            self.offset = first_offset - 1

    def applied_in_part(self, through: Timestamp, last_applied: tuple[int, int]) -> None:
        """The message it waits at is applied up to `last_applied`, every change at or before `through`: read
        again, those events are left out."""
        self._complete(through)
        if self.skip_through is None or last_applied > self.skip_through:
            self.skip_through = last_applied

    def held_at(self, ts: Timestamp | None) -> None:
        """The partition waits at a message whose first change has this time: everything before it is done."""
        self._complete(position.predecessor(ts) if isinstance(ts, Timestamp) else None)

    def applied_event(self, event_position: tuple[int, int]) -> None:
        # Saved even when read again after a restart: the checkpoint's watermark tells other instances how far this
        # partition is applied, and they may be waiting for it.
        self.changed = True
        if self.applied_here is None or event_position > self.applied_here:
            self.applied_here = event_position
        if self.applied_events_through is None or event_position > self.applied_events_through:
            self.applied_events_through = event_position

    def passed(self, received: Received, snapshot_until: Timestamp | None, now: float | None = None) -> None:
        """`received` went through: its events applied, held by the sequencer, or moved past."""
        self.passed_in_order([received], snapshot_until, now)

    def passed_in_order(self, batch: list[Received], snapshot_until: Timestamp | None,
                        now: float | None = None) -> None:
        """Messages of this partition, in offset order, went through; as if each were `passed` in turn."""
        newest_time, heartbeat, newest_ts = self.complete_as_of, None, None
        for received in batch:
            self._complete(received.watermark)
            if received.heartbeat is not None:
                heartbeat = received.heartbeat
                in_sync = heartbeat.in_sync_as_of.timestamp()
                newest_time = in_sync if newest_time is None else max(newest_time, in_sync)
            for event in received.events:
                if event.fields["op"] != "n":
                    event_time = source_time(event.fields)
                    newest_time = event_time if newest_time is None else max(newest_time, event_time)
            message_ts = received.ts
            if message_ts is not None:
                self.ts = message_ts
                newest_ts = position.later(newest_ts, message_ts)
        last = batch[-1]
        self._past_replay(last.offset)
        self.offset, self.snapshot_until = last.offset, snapshot_until
        if newest_ts is not None:
            self._complete(position.predecessor(newest_ts))
        self.last_was_heartbeat = last.heartbeat is not None
        if heartbeat is not None:
            self.in_sync_as_of = heartbeat.in_sync_as_of
            self.heartbeat, self.heartbeat_received_at = heartbeat, time.time() if now is None else now
        self.complete_as_of = newest_time
        self.changed = True

    def checkpoint(self, where: PartitionKey, first_held: FirstHeld | None) -> PartitionPosition | None:
        """Where the partition stands for its checkpoint: never past its oldest change the sequencer holds."""
        offset, watermark = self.offset, self.complete_through
        done = self.applied_here
        if first_held is not None:
            offset = first_held.first_offset - 1 if offset is None else min(offset, first_held.first_offset - 1)
            limit = position.predecessor(first_held.ts)
            watermark = limit if watermark is None or watermark > limit else watermark
            done = (first_held.position[0], first_held.position[1] - 1)
        if done is not None and (self.done_through is None or done > self.done_through):
            self.done_through = done
        if offset is None:
            return None
        return PartitionPosition(where[0], where[1], offset, self.ts, self.snapshot_until, watermark,
                                 self.in_sync_as_of, self.topic_id, self.applied_events_through, self.done_through)

    def lag_seconds(self, now: float | None = None) -> float | None:
        """How far this partition's applied changes are behind the source. While it is read to its end and its
        last message is a fresh heartbeat, the producer's own lag then; otherwise the age of what is known to be
        complete, which grows while nothing new can be known (no producer, no Kafka, a stalled consumer)."""
        now = time.time() if now is None else now
        heartbeat = self.heartbeat
        if (self.at_end and self.last_was_heartbeat and heartbeat is not None
                and self.heartbeat_received_at is not None
                and now - self.heartbeat_received_at <= FRESH_HEARTBEAT_INTERVALS * heartbeat.interval_seconds + 1.0):
            return heartbeat.lag_seconds
        if self.complete_as_of is None:
            return None
        return round(max(0.0, now - self.complete_as_of), 3)


class Partitions:
    """The states of the partitions this consumer owns."""

    def __init__(self) -> None:
        self._states: dict[PartitionKey, PartitionState] = {}

    def assign(self, where: PartitionKey) -> PartitionState:
        state = self._states[where] = PartitionState()
        return state

    def __getitem__(self, where: PartitionKey) -> PartitionState:
        return self._states[where]

    def __contains__(self, where: object) -> bool:
        return where in self._states

    def items(self) -> list[tuple[PartitionKey, PartitionState]]:
        return list(self._states.items())

    def forget(self, where: PartitionKey) -> None:
        self._states.pop(where, None)

    def write_ahead(self, events: list[Event]) -> list[WriteAhead]:
        """The marks to save before a write of these events starts: for each partition whose newest event in it
        lies beyond what its mark covers. They count as saved from now on: the write waits for them, and stops if
        they cannot be."""
        newest: dict[PartitionKey, tuple[int, int]] = {}
        for event in events:
            where = event.where
            if where in self._states and (where not in newest or event.position > newest[where]):
                newest[where] = event.position
        marks = []
        for where, through in newest.items():
            state = self._states[where]
            if state.marked_through is None or through > state.marked_through:
                resume = state.first_read if state.first_read is not None else through[0]
                marks.append(WriteAhead(where[0], where[1], through, resume - 1, state.topic_id))
                state.marked_through = through
        return marks

    def window_unread(self, taken: list[Received]) -> bool:
        """Whether a partition's replay window, restored with it, is not yet read to its end, counting the messages
        `taken`. Once they are handled (`windows_read`), none is waited for again: a partition may be held back
        later, in the gates, with its window still to pass."""
        if not any(state.window_unread for state in self._states.values()):
            return False
        newest: dict[PartitionKey, int] = {}
        for received in taken:
            newest[received.where] = max(newest.get(received.where, -1), received.offset)
        return any(state.window_unread and state.replay_through is not None
                   and newest.get(where, -1) < state.replay_through[0] for where, state in self._states.items())

    def windows_read(self) -> None:
        for state in self._states.values():
            state.window_unread = False

    def watermark(self, where: PartitionKey) -> Timestamp | None:
        state = self._states.get(where)
        return None if state is None else state.watermark

    def lag_seconds(self, now: float | None = None) -> float | None:
        lags = [lag for lag in (state.lag_seconds(now) for state in self._states.values()) if lag is not None]
        return max(lags) if lags else None

