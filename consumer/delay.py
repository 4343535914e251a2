"""When an event happened at the source, for `--target-delay` and the consumer's lag."""
from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

_EPOCH = _dt.datetime(1970, 1, 1)


def source_time(fields: Mapping[str, Any]) -> float:
    """Seconds since the epoch when the event happened at the source. `wall` (milliseconds) is preferred; `ts` only
    has whole seconds, so it is rounded up: an event is never taken as older than it is."""
    wall = fields.get("wall")
    if isinstance(wall, _dt.datetime):
        if wall.tzinfo is None:  # BSON dates decode as naive UTC
            return (wall - _EPOCH).total_seconds()
        return wall.timestamp()
    ts = fields.get("ts")
    return float(ts.time + 1) if ts is not None else 0.0
