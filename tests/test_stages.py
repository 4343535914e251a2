"""Unit tests of the pure stages added for exact replay: key text, fragments, raw batch sizing, the sequencer, lag
and heartbeats. No servers."""
from __future__ import annotations

import datetime as dt
import os
import random

import bson
import pytest
from bson import Decimal128, Int64, ObjectId, Timestamp
from bson.raw_bson import RawBSONDocument

from kafkashake.consumer.decoder import Event
from kafkashake.consumer.intake import Received
from kafkashake.consumer.checkpoint import PartitionPosition, WriteAhead
from kafkashake.consumer.parked import before_parked, dropped_namespaces, first_parked, touches
from kafkashake.consumer.partitions import Partitions, PartitionState
from kafkashake.consumer.sequencer import FirstHeld, Sequencer
from kafkashake.oplog import position
from kafkashake.oplog.entry import Operation
from kafkashake.producer.progress import SyncProgress
from kafkashake.producer.raw_batches import RawBatches
from kafkashake.schemas import fragments, headers
from kafkashake.schemas.codec import encode_raw_batch
from kafkashake.schemas.heartbeats import Heartbeat, heartbeat_event, heartbeat_of
from kafkashake.schemas.partitioning import PartitionBy, key_text, message_key, number_text


# ------------------------------------------------------------------------------------------------ key text

KEY_VECTORS = [
    (ObjectId("65a1b2c3d4e5f60718293a4b"), '{"$oid":"65a1b2c3d4e5f60718293a4b"}'),
    ("a\u00e9", '"a\\u00e9"'),
    (7, '{"$number":"7"}'),
    (Int64(7), '{"$number":"7"}'),
    (7.0, '{"$number":"7"}'),
    (Decimal128("7.000"), '{"$number":"7"}'),
    (Decimal128("1E+2"), '{"$number":"100"}'),
    (-0.0, '{"$number":"0"}'),
    (2.5, '{"$number":"2.5"}'),
    (0.1, '{"$number":"0.1000000000000000055511151231257827021181583404541015625"}'),
    (Decimal128("0.1"), '{"$number":"0.1"}'),
    (float("nan"), '{"$number":"NaN"}'),
    (Decimal128("-Infinity"), '{"$number":"-Infinity"}'),
    ({"k": Int64(7), "s": "x"}, '{"k":{"$number":"7"},"s":"x"}'),
    ({"a": [1, 2.0]}, '{"a":[{"$number":"1"},{"$number":"2"}]}'),
    (True, "true"),
    (None, "null"),
    (dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), '{"$date":{"$numberLong":"1704067200000"}}'),
]


@pytest.mark.parametrize("value, text", KEY_VECTORS, ids=[text for _, text in KEY_VECTORS])
def test_key_text_vectors(value: object, text: str) -> None:
    assert key_text(value) == text


def test_ids_mongodb_holds_equal_share_a_key_and_others_do_not() -> None:
    for same in ([7, Int64(7), 7.0, Decimal128("7"), Decimal128("7.0")], [{"a": 1}, {"a": 1.0}],
                 [RawBSONDocument(bson.encode({"a": Int64(1)})), {"a": 1}]):
        assert len({message_key(PartitionBy.ID, "d.c", value) for value in same}) == 1
    for different in ([0.1, Decimal128("0.1")], [{"a": 1, "b": 2}, {"b": 2, "a": 1}], [1, "1"], [1, True]):
        assert len({message_key(PartitionBy.ID, "d.c", value) for value in different}) == len(different)
    assert number_text(2**63 - 1) == str(2**63 - 1)


# ------------------------------------------------------------------------------------------------ fragments


def reassemble(pieces: list[tuple[bytes, list[tuple[str, bytes]]]], start: int = 0) -> fragments.Reassembled | None:
    reassembly = fragments.Reassembly()
    whole = None
    for offset, (piece, fragment_headers) in enumerate(pieces, start):
        whole = reassembly.add(headers.as_dict(fragment_headers), piece, offset)
    return whole


def test_fragments_split_and_reassemble_with_checks() -> None:
    value = os.urandom(1_000_003)
    pieces = list(fragments.split(value, 300_000))
    assert [len(piece) for piece, _ in pieces] == [300_000, 300_000, 300_000, 100_003]
    whole = reassemble(pieces, start=40)
    assert whole is not None and whole.value == value and whole.first_offset == 40
    reassembly = fragments.Reassembly()
    with pytest.raises(fragments.FragmentError, match="without the fragments before it"):
        reassembly.add(headers.as_dict(pieces[1][1]), pieces[1][0], 1)
    damaged = [(piece if index else b"x" * len(piece), fragment_headers)
               for index, (piece, fragment_headers) in enumerate(pieces)]
    with pytest.raises(fragments.FragmentError, match="SHA-256"):
        reassemble(damaged)


def test_a_value_sent_again_after_a_restart_replaces_its_incomplete_copy() -> None:
    value = os.urandom(1000)
    first, again = list(fragments.split(value, 300)), list(fragments.split(value, 300))
    reassembly = fragments.Reassembly()
    assert reassembly.add(headers.as_dict(first[0][1]), first[0][0], 10) is None
    assert reassembly.add(headers.as_dict(first[1][1]), first[1][0], 11) is None
    whole = None
    for offset, (piece, fragment_headers) in enumerate(again, 12):
        whole = reassembly.add(headers.as_dict(fragment_headers), piece, offset)
    assert whole is not None and whole.value == value and whole.first_offset == 12 and reassembly.abandoned == 1


# ------------------------------------------------------------------------------------------------ raw batches


def operation(number: int, size: int) -> Operation:
    value = bson.encode({"op": "i", "ns": "d.c", "ts": Timestamp(1, number), "o": {"_id": number, "b": "x" * size}})
    return Operation(Timestamp(1, number), "i", "d.c", number, value)


def test_raw_batches_close_before_the_topics_limit() -> None:
    batches = RawBatches(max_events=1000, max_bytes=10_000_000, linger_s=10)
    limit = 1_048_588 - 2048
    closed = [batch for n in range(200) for *_, batch in batches.add("t", 0, operation(n, 20_000), lambda: None, limit)]
    closed += [batch for *_, batch in batches.drain()]
    assert sum(len(batch.records) for batch in closed) == 200
    assert all(len(encode_raw_batch(batch.records)) <= limit for batch in closed)
    assert len(encode_raw_batch(closed[0].records)) > limit * 0.9, "filled, not cut short"
    alone = list(RawBatches(10, 10_000_000, 10).add("t", 0, operation(0, 2_000_000), lambda: None, limit))
    assert len(alone) == 1 and len(alone[0][2].records) == 1, "an event larger than the limit goes alone"


# ------------------------------------------------------------------------------------------------ sequencer


def received(partition: int, offset: int, *specs: tuple[str, int, str], watermark: Timestamp | None = None) -> Received:
    message_headers = {} if watermark is None else {headers.WATERMARK: headers.position_text(watermark)}
    message = Received("t", partition, offset, offset, None, b"", [], message_headers)
    message.events = [Event({"op": op, "ns": ns, "ts": Timestamp(100, inc), "o": {"_id": inc}}, "t", partition,
                            offset, index) for index, (op, inc, ns) in enumerate(specs)]
    return message


def test_ordered_collections_apply_in_source_order_across_partitions() -> None:
    sequencer = Sequencer(lambda ns: ns == "d.unique")

    def complete(topic: str, partition: int) -> Timestamp | None:
        return sequencer.through((topic, partition))

    free = sequencer.take([received(0, 5, ("i", 3, "d.unique"), ("i", 4, "d.plain"))], lambda ns: ns)
    assert [e.fields["ts"].inc for e in free] == [4], "other collections keep per-partition parallelism"
    assert sequencer.release(complete, lambda topic: 2) == [], "partition 1 may still hold an earlier change"
    sequencer.take([received(1, 9, ("d", 2, "d.unique"), ("u", 7, "d.unique"))], lambda ns: ns)
    released = sequencer.release(complete, lambda topic: 2)
    assert [e.fields["ts"].inc for e in released] == [2, 3], "in source time order; 7 waits for partition 0"
    assert sequencer.first_held(("t", 1)) == FirstHeld(9, Timestamp(100, 7), (9, 1))
    sequencer.saw(("t", 0), Timestamp(100, 8))
    assert [e.fields["ts"].inc for e in sequencer.release(complete, lambda topic: 2)] == [7]
    assert sequencer.held() == 0


def test_two_instances_holding_changes_of_one_source_time_do_not_wait_for_each_other() -> None:
    """A copy's documents (or a transaction's changes) share one source time. Each instance's saved watermark stays
    before its oldest held change, so waiting for the other's to reach that time would wait for ever: the partition
    after goes once the partitions before it are through."""
    first, second = Sequencer(lambda ns: True), Sequencer(lambda ns: True)
    first.take([received(0, 5, ("i", 3, "d.unique"))], lambda ns: ns)
    second.take([received(1, 9, ("i", 3, "d.unique"))], lambda ns: ns)

    def saved(sequencer: Sequencer, partition: int) -> Timestamp | None:
        held = sequencer.first_held(("t", partition))
        through = sequencer.through(("t", partition))
        return through if held is None else min(through, position.predecessor(held.ts))  # type: ignore[type-var]

    assert second.release(lambda topic, k: saved(first, k), lambda topic: 2) == [], "partition 0 goes first"
    assert [e.partition for e in first.release(lambda topic, k: saved(second, k), lambda topic: 2)] == [0]
    first.saw(("t", 0), Timestamp(100, 3))  # applied, and a later watermark read
    assert [e.partition for e in second.release(lambda topic, k: saved(first, k), lambda topic: 2)] == [1]


def test_a_restart_skips_what_was_applied_and_replays_the_rest_convergently() -> None:
    """A message released in part (a raw batch spanning source times): read again by the next owner of its
    partition, its events before the first held one are not applied a second time. Applied again, an old insert
    would meet the unique value a newer document took since."""
    sequencer = Sequencer(lambda ns: ns == "d.unique")
    owner = PartitionState()
    batch = received(0, 5, ("i", 3, "d.unique"), ("i", 4, "d.unique"), ("i", 8, "d.unique"), ("i", 9, "d.plain"))
    taken = sequencer.take([batch], lambda ns: ns)
    sequencer.saw(("t", 1), Timestamp(100, 5))
    taken += sequencer.release(lambda topic, partition: sequencer.through((topic, partition)), lambda topic: 2)
    for event in taken:
        owner.applied_event(event.position)
    owner.passed(batch, None)
    saved = owner.checkpoint(("t", 0), sequencer.first_held(("t", 0)))
    assert saved is not None and saved.offset == 4, "the checkpoint stays before the held change's message"
    assert saved.done_through == (5, 1) and saved.applied_through == (5, 3)

    successor = PartitionState()
    successor.restore(saved)
    again = received(0, 5, ("i", 3, "d.unique"), ("i", 4, "d.unique"), ("i", 8, "d.unique"), ("i", 9, "d.plain"))
    assert successor.mark_replayed(again) == 2
    assert [(e.fields["ts"].inc, e.replayed) for e in again.events] == [(8, True), (9, True)]


def test_events_a_write_ahead_mark_covers_are_read_again_as_replayed_after_a_crash() -> None:
    """The mark is saved before the write starts; the checkpoint after it is done. A crash in between leaves the
    checkpoint before the batch: read again, its events are replayed (applied convergently), later ones are new."""
    partitions = Partitions()
    owner = partitions.assign(("t", 0))
    owner.topic_id = "topic-1"
    owner.reading(first_offset=5)
    batch = received(0, 5, ("d", 3, "d.unique"), ("i", 4, "d.unique"))
    marks = partitions.write_ahead(batch.events)
    assert marks == [WriteAhead("t", 0, (5, 1), 4, "topic-1")], "no checkpoint yet: it would begin before offset 5"
    assert partitions.write_ahead(batch.events) == [], "already covered"

    successor = PartitionState()
    successor.restore(PartitionPosition("t", 0, 4, None, topic_id="topic-1", writing_through=(5, 1)))
    again = received(0, 5, ("d", 3, "d.unique"), ("i", 4, "d.unique"))
    after = received(0, 6, ("u", 5, "d.unique"))
    assert successor.mark_replayed(again) == 0 and successor.mark_replayed(after) == 0
    assert [e.replayed for e in again.events + after.events] == [True, True, False]


def test_a_replay_window_is_read_to_its_end_before_it_is_gated() -> None:
    """Written in one batch, a window's final states fit each other; split, the first part's could collide with
    values the destination holds from the rest."""
    partitions = Partitions()
    partitions.assign(("t", 0)).restore(PartitionPosition("t", 0, 4, None, writing_through=(7, 0)))
    partitions.assign(("t", 1))
    assert partitions.window_unread([received(0, 5, ("i", 1, "d.u")), received(1, 9, ("i", 2, "d.u"))])
    assert not partitions.window_unread([received(0, 7, ("i", 3, "d.u"))])
    partitions.windows_read()
    assert not partitions.window_unread([]), "once handled, a partition held back later is not waited for"


def test_a_checkpoint_stays_before_the_first_parked_event_of_its_partition() -> None:
    """Read again after a restart, a parked event is replayed, not skipped; a message in fragments is read again
    from its first."""
    saved = PartitionPosition("t", 0, 20, None, applied_through=(20, 0), done_through=(20, 0))
    parked = [Event({}, "t", 0, 15, 0), Event({}, "t", 0, 12, 1, first_offset=10), Event({}, "t", 1, 3, 0)]
    firsts = first_parked(parked)
    assert {where: event.position for where, event in firsts.items()} == {("t", 0): (12, 1), ("t", 1): (3, 0)}
    held = before_parked(saved, firsts[("t", 0)])
    assert (held.offset, held.done_through, held.applied_through) == (9, (12, 0), (20, 0))
    assert before_parked(saved, None) is saved


def test_only_ddl_that_drops_or_moves_documents_closes_their_parked_events() -> None:
    def command(ns: str, body: dict) -> Event:
        return Event({"op": "c", "ns": ns, "o": body}, "t", 0, 1)

    events = [command("shop.$cmd", {"drop": "orders"}),
              command("admin.$cmd", {"renameCollection": "shop.a", "to": "shop.b"}), command("old.$cmd", {"dropDatabase": 1}),
              command("shop.$cmd", {"createIndexes": "items", "indexes": []}),
              Event({"op": "n", "ns": "", "o": {"msg": "barrier"}}, "t", 0, 2)]
    dropped = frozenset(dropped_namespaces(events))
    assert dropped == {"shop.orders", "shop.a", "old"}
    assert [touches(ns, dropped) for ns in ("shop.orders", "shop.a", "shop.b", "old.x", "shop.items")] == [
        True, True, False, True, False]


def test_a_message_applied_in_part_at_the_exit_point_is_not_applied_twice_when_read_again() -> None:
    state = PartitionState()
    message = received(0, 7, ("i", 3, "d.plain"), ("i", 4, "d.plain"), ("i", 9, "d.plain"))
    state.waiting_at(message.first_offset)
    state.applied_in_part(Timestamp(100, 5), message.events[1].position)
    assert state.watermark == Timestamp(100, 5), "complete through the exit point"
    saved = state.checkpoint(("t", 0), None)
    assert saved is not None and saved.offset == 6, "a checkpoint before the message, though none went through"
    again = received(0, 7, ("i", 3, "d.plain"), ("i", 4, "d.plain"), ("i", 9, "d.plain"))
    assert state.mark_replayed(again) == 2 and [e.fields["ts"].inc for e in again.events] == [9]


# ------------------------------------------------------------------------------------------------ lag


def test_producer_lag_is_zero_in_sync_and_grows_when_it_cannot_know() -> None:
    now = [1000.0]
    progress = SyncProgress(clock=lambda: now[0])
    progress.observe(Timestamp(990, 1), in_sync=True)
    assert progress.lag_seconds() == 0.0
    now[0] = 1030.0
    progress.observe(Timestamp(990, 1), in_sync=False)
    assert progress.lag_seconds() == 30.0, "the source went away 30 s ago"
    heartbeat = progress.heartbeat(2.0)
    assert heartbeat is not None and heartbeat.in_sync_as_of.timestamp() == 1000.0


def test_heartbeats_round_trip_and_consumer_lag_follows_them() -> None:
    beat = Heartbeat(Timestamp(500, 3), dt.datetime.fromtimestamp(1000, dt.timezone.utc), 0.0, 2.0)
    event = bson.decode(heartbeat_event(beat, dt.datetime.now(dt.timezone.utc)),
                        codec_options=bson.CodecOptions(tz_aware=True))
    assert heartbeat_of(event) == beat
    state = PartitionState()
    message = Received("t", 0, 1, 1, None, b"", [], {headers.HEARTBEAT: "true",
                                                     headers.WATERMARK: "500,3"})
    message.events = [Event(event, "t", 0, 1)]
    state.passed(message, None, now=1001.0)
    state.at_end = True
    assert state.lag_seconds(now=1003.0) == 0.0, "read to its end, a fresh heartbeat, a producer in sync"
    assert state.lag_seconds(now=1020.0) == 20.0, "no heartbeat for 15 s: what is known grows old"
    assert state.watermark == Timestamp(500, 3)


def test_a_partitions_messages_passed_together_leave_the_state_they_leave_passed_one_by_one() -> None:
    """The consumer passes a batch's messages of a partition in one call; heartbeats going back in time, ts out of
    order, events without ts and `n` events included."""
    rng = random.Random(7)

    def message(offset: int) -> Received:
        if rng.random() < 0.25:
            beat = Heartbeat(Timestamp(500 + rng.randrange(50), 1),
                             dt.datetime.fromtimestamp(1000 + rng.randrange(-30, 30), dt.timezone.utc), 0.0, 2.0)
            event = bson.decode(heartbeat_event(beat, dt.datetime(2030, 1, 1)))
            found = Received("t", 0, offset, offset, None, b"", [], {headers.HEARTBEAT: "true",
                                                                     headers.WATERMARK: f"{500 + rng.randrange(50)},1"})
            found.events = [Event(event, "t", 0, offset)]
            return found
        watermark = {headers.WATERMARK: f"{500 + rng.randrange(50)},{rng.randrange(3)}"} if rng.random() < 0.5 else {}
        found = Received("t", 0, offset, offset, None, b"", [], watermark)
        for index in range(rng.randrange(3)):
            fields = {"op": rng.choice("iudn"), "ns": "d.c", "o": {}}
            if rng.random() < 0.8:
                fields["ts"] = Timestamp(500 + rng.randrange(50), rng.randrange(1, 3))
            if rng.random() < 0.5:
                fields["wall"] = dt.datetime(2030, 1, 1, 0, 0, rng.randrange(60))
            found.events.append(Event(fields, "t", 0, offset, index))
        return found

    for _ in range(300):
        together, one_by_one = PartitionState(), PartitionState()
        for state in (together, one_by_one):
            state.skip_through, state.replay_through = (3, 0), (5, 0)
        messages = [message(offset) for offset in range(rng.randrange(1, 10))]
        together.passed_in_order(messages, Timestamp(9, 9), now=5.0)
        for received in messages:
            one_by_one.passed(received, Timestamp(9, 9), now=5.0)
        assert together == one_by_one
