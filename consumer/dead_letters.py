"""Dead letters: messages the consumer cannot replay, kept in Kafka instead of stopping or being skipped.

A dead letter is the original message (key, value, headers) plus headers saying why (`kafkashake.dlq.reason`,
`kafkashake.dlq.error`) and where it came from (topic, partition, offset, group, time). It is written and
acknowledged before the consumer's checkpoint moves past the original, so a crash in between sends it again
rather than losing it."""
from __future__ import annotations

import datetime as _dt
import logging
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from runtime.errors import FatalError
from runtime.kafka_topics import CLIENT_SPECIFIC, TopicDirectory
from runtime.secrets import redact
from schemas import headers

log = logging.getLogger("kafkashake.consumer.dead_letters")
DELIVERY_TIMEOUT_S = 30.0
# Reasons, as counted in kafkashake_consumer_dead_letters{reason}.
UNDECODABLE = "undecodable"
REJECTED = "rejected"
UNKNOWN_OP = "unknown_op"
UNAPPLICABLE_UPDATE = "unapplicable_update"


class DeadLetters:
    def __init__(self, config: dict[str, Any], topic: str, group: str, partitions: int = 1) -> None:
        producer_config = {k: v for k, v in config.items() if k not in CLIENT_SPECIFIC}
        self._producer = Producer({**producer_config, "enable.idempotence": True, "acks": "all"})
        self._directory = TopicDirectory(config, partitions, -1)
        self.topic = topic
        self._group = group

    def send(self, message: Message, reason: str, error: str) -> None:
        """Write one dead letter and wait for Kafka to acknowledge it."""
        self._directory.partitions(self.topic)
        now = _dt.datetime.now(tz=_dt.timezone.utc).isoformat().replace("+00:00", "Z")
        letter_headers = list(message.headers() or []) + [
            (headers.DLQ_REASON, reason.encode()),
            (headers.DLQ_ERROR, redact(error)[:2000].encode()),
            (headers.DLQ_TOPIC, message.topic().encode()),
            (headers.DLQ_PARTITION, str(message.partition()).encode()),
            (headers.DLQ_OFFSET, str(message.offset()).encode()),
            (headers.DLQ_GROUP, self._group.encode()),
            (headers.DLQ_TIME, now.encode()),
        ]
        outcome: list[KafkaError | None] = []
        self._producer.produce(self.topic, value=message.value(), key=message.key(), headers=letter_headers,
                               on_delivery=lambda err, _msg: outcome.append(err))
        self._producer.flush(DELIVERY_TIMEOUT_S)
        if not outcome or outcome[0] is not None:
            problem = outcome[0] if outcome else f"no acknowledgement within {DELIVERY_TIMEOUT_S:.0f} s"
            raise FatalError(f"cannot write a dead letter to {self.topic}: {problem}. The consumer stops before the "
                             f"message {message.topic()}/{message.partition()}@{message.offset()} so nothing is lost")
        log.warning("dead letter written", extra={"reason": reason, "error": redact(error)[:300],
                                                  "source": f"{message.topic()}/{message.partition()}@{message.offset()}",
                                                  "dead_letter_topic": self.topic})
