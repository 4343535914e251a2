"""Pure logic of the replay policies: namespace rules, the delay gate and the exit point."""
from __future__ import annotations

import datetime as dt

import pytest
from bson.timestamp import Timestamp

from kafkashake.consumer.decoder import Event
from kafkashake.consumer.delay import source_time
from kafkashake.consumer.gates import DelayGate, ExitGate, Verdict
from kafkashake.consumer.intake import Received
from kafkashake.oplog.namespaces import NamespaceFilter, NamespaceMap, command_target


def test_filters_follow_mongoshake_syntax() -> None:
    white = NamespaceFilter.parse(white="shop;crm.users")
    assert white.allows("shop.orders") and white.allows("crm.users") and not white.allows("crm.leads")
    assert not white.allows("shopping.x"), "a db rule matches the database name exactly"
    black = NamespaceFilter.parse(black="shop.secret")
    assert black.allows("shop.orders") and not black.allows("shop.secret")
    assert white.server_match() == {"$match": {"$or": [{"ns.db": "shop"}, {"ns.db": "crm", "ns.coll": "users"}]}}
    with pytest.raises(ValueError):
        NamespaceFilter.parse(white="a", black="b")


def test_transforms_rename_collections_databases_and_ddl_targets() -> None:
    rules = NamespaceMap.parse("shop.items:archive.items_copy;shop:mirror")
    assert rules.map("shop.items") == "archive.items_copy" and rules.map("shop.other") == "mirror.other"
    assert rules.map("crm.users") == "crm.users"
    assert rules.map_command("shop.$cmd", {"drop": "items"}) == ("archive.$cmd", {"drop": "items_copy"})
    assert rules.map_command("shop.$cmd", {"renameCollection": "shop.a", "to": "shop.b"}) == (
        "mirror.$cmd", {"renameCollection": "mirror.a", "to": "mirror.b"})
    assert rules.map_command("shop.$cmd", {"dropDatabase": 1}) == ("mirror.$cmd", {"dropDatabase": 1})
    assert command_target("shop.$cmd", {"createIndexes": "items"}) == "shop.items"
    with pytest.raises(ValueError):
        NamespaceMap.parse("shop.items:archive")


def received(partition: int, *fields: dict, offset: int = 0) -> Received:
    message = Received("t", partition, offset, offset, None, b"", [], {})
    message.events = [Event(dict(f), "t", partition, offset, index) for index, f in enumerate(fields)]
    return message


def test_delay_gate_uses_wall_time_and_never_runs_early() -> None:
    wall = dt.datetime(2026, 1, 1, 12, 0, 0, 250000, tzinfo=dt.timezone.utc)
    assert source_time({"wall": wall}) == wall.timestamp()
    assert source_time({"ts": Timestamp(100, 7)}) == 101.0, "whole-second ts is rounded up"
    gate = DelayGate(3.0)
    old = received(1, {"op": "i", "ns": "a.b", "ts": Timestamp(99, 1)})
    assert gate.check(old, now=102.9) is Verdict.HOLD and gate.check(old, now=103.0) is Verdict.APPLY
    assert gate.release_due(now=102.0) == [] and gate.release_due(now=103.5) == [("t", 1)]
    assert DelayGate(0).check(received(2, {"op": "i", "ns": "a.b", "ts": Timestamp(10**9, 1)})) is Verdict.APPLY


def test_exit_gate_needs_every_partition_passed_or_its_watermark_at_the_exit_point() -> None:
    gate = ExitGate(Timestamp(1000, 5))
    assert gate.is_past(Timestamp(1000, 6)) and not gate.is_past(Timestamp(1000, 5))
    assert gate.check(received(0, {"op": "i", "ns": "a.b", "ts": Timestamp(1000, 6)})) is Verdict.HOLD
    assert gate.check(received(1, {"op": "i", "ns": "a.b", "ts": Timestamp(1000, 5)})) is Verdict.APPLY
    watermarks = {("t", 1): Timestamp(1000, 4)}
    assert not gate.finished([("t", 0), ("t", 1)], watermarks.get), "partition 1 may still get changes up to T"
    watermarks[("t", 1)] = Timestamp(1000, 5)
    assert gate.finished([("t", 0), ("t", 1)], watermarks.get)
    assert not gate.finished([("t", 0), ("t", 1), ("t", 2)], watermarks.get), "no watermark, no knowledge"
