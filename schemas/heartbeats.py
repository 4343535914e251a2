"""Heartbeats: a change-less event the producer sends to a partition that has had no message for a while.

Every message the producer sends carries the header `kafkashake.watermark`: every change at or before that
position was acknowledged by Kafka before the message was handed over, so in its partition all of them lie at
lower offsets. A partition without traffic learns the watermark from heartbeats, one every
`--heartbeat-interval-seconds`. A consumer that has applied everything before a message with watermark W has applied
every change at or before W that belongs to this partition.

A heartbeat is an oplog-form no-op, in the topic's format (a one-record batch for raw):
`{op: "n", ns: "", ts: <watermark>, wall: <now>, o: {msg: "kafkashake heartbeat", watermark: <Timestamp>,
in_sync_as_of: <date>, lag_seconds: <double>, interval_seconds: <double>}}`, with the headers `kafkashake.heartbeat: true` and
`kafkashake.watermark`. `in_sync_as_of` is the last moment at which the producer had read everything the source had
logged and Kafka had acknowledged all of it; `lag_seconds` the producer's lag when it sent the heartbeat."""
from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bson
from bson.timestamp import Timestamp

MESSAGE = "kafkashake heartbeat"


@dataclass(frozen=True)
class Heartbeat:
    watermark: Timestamp
    in_sync_as_of: _dt.datetime
    lag_seconds: float
    interval_seconds: float = 0.0


def heartbeat_event(heartbeat: Heartbeat, now: _dt.datetime) -> bytes:
    return bson.encode({"op": "n", "ns": "", "ts": heartbeat.watermark, "wall": now,
                        "o": {"msg": MESSAGE, "watermark": heartbeat.watermark,
                              "in_sync_as_of": heartbeat.in_sync_as_of, "lag_seconds": heartbeat.lag_seconds,
                              "interval_seconds": heartbeat.interval_seconds}})


def heartbeat_of(fields: Mapping[str, Any]) -> Heartbeat | None:
    """The heartbeat an event carries, or None for any other event."""
    body = fields.get("o")
    if fields.get("op") != "n" or not isinstance(body, Mapping) or body.get("msg") != MESSAGE:
        return None
    watermark, in_sync = body.get("watermark"), body.get("in_sync_as_of")
    if not isinstance(watermark, Timestamp) or not isinstance(in_sync, _dt.datetime):
        return None
    if in_sync.tzinfo is None:
        in_sync = in_sync.replace(tzinfo=_dt.timezone.utc)
    return Heartbeat(watermark, in_sync, float(body.get("lag_seconds") or 0.0),
                     float(body.get("interval_seconds") or 0.0))
