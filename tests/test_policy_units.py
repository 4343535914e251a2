"""Pure logic of the replay policies: namespace rules, the delay gate and the exit point."""
from __future__ import annotations

import datetime as dt

import pytest
from bson.timestamp import Timestamp

from consumer.delay import DelayGate, source_time
from consumer.exit_point import ExitPoint
from oplog.namespaces import NamespaceFilter, NamespaceMap, command_target


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


def test_delay_gate_uses_wall_time_and_never_runs_early() -> None:
    wall = dt.datetime(2026, 1, 1, 12, 0, 0, 250000, tzinfo=dt.timezone.utc)
    assert source_time({"wall": wall}) == wall.timestamp()
    assert source_time({"ts": Timestamp(100, 7)}) == 101.0, "whole-second ts is rounded up"
    gate = DelayGate(3.0)
    assert not gate.is_due(100.0, now=102.9) and gate.is_due(100.0, now=103.0)
    gate.hold(("t", 1), 100.0)
    assert gate.release_due(now=102.0) == [] and gate.release_due(now=103.5) == [("t", 1)]
    assert DelayGate(0).is_due(10**12)


def test_exit_point_needs_every_partition_passed_or_settled_at_its_end() -> None:
    point = ExitPoint(Timestamp(1000, 5), settle_s=5)
    assert point.is_past(Timestamp(1000, 6)) and not point.is_past(Timestamp(1000, 5))
    point.passed(("t", 0))
    point.reached_end(("t", 1))
    assert not point.finished([("t", 0), ("t", 1)], now=1003)
    assert point.finished([("t", 0), ("t", 1)], now=1006)
    point.received(("t", 1))
    assert not point.finished([("t", 0), ("t", 1)], now=2000)
