"""Dead letters: what the consumer cannot replay, kept in Kafka instead of stopping or being skipped.

A dead letter is written per event: a message that cannot be decoded goes whole (its key, value and headers); an
event the destination rejects goes alone, as its message did if it held only that event, or as one BSON event
(`kafkashake.format: bson`, `kafkashake.dlq.event_index`) if it came in a raw batch with others. Headers say why
(`kafkashake.dlq.reason`, `kafkashake.dlq.error`) and where it came from (topic, partition, offset, group, time).
A dead letter larger than its topic accepts travels in fragments, like any kafkashake message. It is written and
acknowledged before the consumer's checkpoint moves past the original, so a crash in between sends it again
rather than losing it."""
from __future__ import annotations

import datetime as _dt
import logging
from typing import Any

import bson
from confluent_kafka import KafkaError, Producer

from kafkashake.consumer.decoder import Event
from kafkashake.consumer.intake import Received
from kafkashake.runtime.errors import FatalError
from kafkashake.runtime.kafka_health import KafkaHealth
from kafkashake.runtime.kafka_topics import TopicDirectory, admin_config
from kafkashake.runtime.secrets import redact
from kafkashake.schemas import fragments, headers
from kafkashake.schemas.codec import EVENT_CODEC_OPTIONS

log = logging.getLogger("kafkashake.consumer.dead_letters")
DELIVERY_TIMEOUT_S = 30.0
# Room for the record's framing and the dead-letter headers besides the value.
ROOM_FOR_HEADERS_BYTES = 8192
# Reasons, as counted in kafkashake_consumer_dead_letters{reason}.
UNDECODABLE = "undecodable"
REJECTED = "rejected"
UNKNOWN_OP = "unknown_op"
UNAPPLICABLE_UPDATE = "unapplicable_update"
REASONS = (UNDECODABLE, REJECTED, UNKNOWN_OP, UNAPPLICABLE_UPDATE)


class DeadLetters:
    def __init__(self, config: dict[str, Any], topic: str, group: str, health: KafkaHealth,
                 partitions: int = 1) -> None:
        self._producer = Producer({**admin_config(config), "enable.idempotence": True, "acks": "all",
                                   "message.max.bytes": 64 * 1024 * 1024, **health.client_options()})
        self._directory = TopicDirectory(config, partitions, -1, health=health)
        self.topic = topic
        self._group = group

    def _letter(self, received: Received, event: Event | None) -> tuple[bytes | None, list[tuple[str, bytes]]]:
        if event is None or len(received.events) <= 1:
            return received.value, list(received.raw_headers)
        value = bson.encode(event.fields, codec_options=EVENT_CODEC_OPTIONS)
        kept = [(name, data) for name, data in received.raw_headers
                if name not in (headers.FORMAT, headers.COUNT, headers.NAMESPACE, headers.OPERATION)]
        return value, kept + [(headers.FORMAT, b"bson"), (headers.NAMESPACE, event.ns.encode()),
                              (headers.OPERATION, event.op.encode()),
                              (headers.DLQ_EVENT_INDEX, str(event.index).encode())]

    def send(self, received: Received, reason: str, error: str, event: Event | None = None) -> None:
        """Write one dead letter (the message, or one event of it) and wait for Kafka to acknowledge it."""
        limit = self._directory.limits(self.topic).max_message_bytes - ROOM_FOR_HEADERS_BYTES
        now = _dt.datetime.now(tz=_dt.timezone.utc).isoformat().replace("+00:00", "Z")
        value, kept = self._letter(received, event)
        letter_headers = kept + [
            (headers.DLQ_REASON, reason.encode()),
            (headers.DLQ_ERROR, redact(error)[:2000].encode()),
            (headers.DLQ_TOPIC, received.topic.encode()),
            (headers.DLQ_PARTITION, str(received.partition).encode()),
            (headers.DLQ_OFFSET, str(received.offset).encode()),
            (headers.DLQ_GROUP, self._group.encode()),
            (headers.DLQ_TIME, now.encode()),
        ]
        pieces = ([(value, [])] if value is None or len(value) <= limit else list(fragments.split(value, limit)))
        outcome: list[KafkaError | None] = []
        for piece, fragment_headers in pieces:
            self._producer.produce(self.topic, value=piece, key=received.key, headers=letter_headers + fragment_headers,
                                   on_delivery=lambda err, _msg: outcome.append(err))
        self._producer.flush(DELIVERY_TIMEOUT_S)
        failed = [err for err in outcome if err is not None]
        if len(outcome) < len(pieces) or failed:
            problem = failed[0] if failed else f"no acknowledgement within {DELIVERY_TIMEOUT_S:.0f} s"
            raise FatalError(f"cannot write a dead letter to {self.topic}: {problem}. The consumer stops before the "
                             f"message {received.describe()} so nothing is lost")
        log.warning("dead letter written", extra={"reason": reason, "error": redact(error)[:300],
                                                  "source": received.describe(), "dead_letter_topic": self.topic,
                                                  "event_index": None if event is None else event.index})
