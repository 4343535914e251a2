"""Oplog positions (`bson.Timestamp`) and their conversions to and from text, integers and time."""
from __future__ import annotations

import datetime as _dt

from bson.timestamp import Timestamp

_MAX_INCREMENT = 0xFFFFFFFF


def to_int64(ts: Timestamp) -> int:
    """The position as one integer: seconds << 32 | increment (MongoDB's own Timestamp layout)."""
    return (ts.time << 32) | ts.inc


def from_int64(value: int) -> Timestamp:
    return Timestamp(value >> 32, value & _MAX_INCREMENT)


def predecessor(ts: Timestamp) -> Timestamp:
    """The greatest position strictly before `ts`: reading with `$gt` from it returns `ts` itself again."""
    if ts.inc > 0:
        return Timestamp(ts.time, ts.inc - 1)
    return Timestamp(ts.time - 1, _MAX_INCREMENT)


def later(a: Timestamp | None, b: Timestamp | None) -> Timestamp | None:
    """The newer of two positions, either of which may be unknown."""
    return a if b is None or a is b or (a is not None and a >= b) else b


def successor(ts: Timestamp) -> Timestamp:
    if ts.inc < _MAX_INCREMENT:
        return Timestamp(ts.time, ts.inc + 1)
    return Timestamp(ts.time + 1, 0)


def text(ts: Timestamp) -> str:
    """`seconds,increment`: how positions are written in headers, options and logs."""
    return f"{ts.time},{ts.inc}"


def iso_time(ts: Timestamp) -> str:
    """The position's second as ISO-8601 UTC: `2023-11-14T22:13:20Z`."""
    return _dt.datetime.fromtimestamp(ts.time, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(ts: Timestamp | None) -> str:
    """Human form used in logs and errors: `1700000000,5 (2023-11-14T22:13:20Z)`."""
    return "none" if ts is None else f"{text(ts)} ({iso_time(ts)})"


def parse_through(value: str) -> Timestamp:
    """An inclusive bound such as --exit-at: `<seconds>,<increment>` exactly, or an ISO time covering every
    increment of its second."""
    parsed = parse(value)
    return parsed if "," in value else Timestamp(parsed.time, _MAX_INCREMENT)


def parse(text: str) -> Timestamp:
    """`<seconds>,<increment>`, or an ISO-8601 UTC time (which maps to increment 0 of that second)."""
    text = text.strip()
    if "," in text:
        seconds, increment = text.split(",", 1)
        try:
            ts = Timestamp(int(seconds), int(increment))
        except (ValueError, TypeError, OverflowError) as exc:
            raise ValueError(f"{text!r} is not <seconds>,<increment> with two non-negative integers") from exc
        return ts
    try:
        when = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{text!r} is neither an ISO-8601 time nor <seconds>,<increment>") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return Timestamp(int(when.timestamp()), 0)
