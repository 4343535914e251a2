"""`kafkashake inspect`: read messages of any kafkashake format (and dead letters) and print their events."""
from __future__ import annotations

import base64
import json
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any, TextIO

from bson import json_util
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, Message, TopicPartition

from kafkashake.runtime.errors import FatalError
from kafkashake.runtime.settings import KafkaSettings
from kafkashake.schemas import fragments, headers
from kafkashake.schemas.codec import UndecodableMessage, decode_events, sniff

RELAXED = json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED)
CANONICAL = json_util.JSONOptions(json_mode=json_util.JSONMode.CANONICAL)
IDLE_END_S = 3.0


def parse_offset(text: str) -> int:
    if text == "beginning":
        return OFFSET_BEGINNING
    if text == "end":
        return OFFSET_END
    if text.isdigit():
        return int(text)
    raise ValueError("accepted: beginning, end, or a non-negative offset")


def _message_fields(message: Message) -> dict[str, Any]:
    key = message.key()
    return {
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "key": None if key is None else key.decode("utf-8", "backslashreplace"),
        "headers": headers.as_dict(message.headers()),
    }


def describe_message(message: Message, value: bytes | None = None,
                     first_offset: int | None = None) -> Iterator[dict[str, Any]]:
    """One record per event in the message, or one record saying why it cannot be decoded. `value` is the whole
    value of a fragmented message, which then starts at `first_offset`."""
    fields = _message_fields(message)
    if first_offset is not None and first_offset != message.offset():
        fields["first_offset"] = first_offset
        fields["headers"] = {k: v for k, v in fields["headers"].items() if k not in fragments.FRAGMENT_HEADERS}
    value = message.value() if value is None else value
    try:
        events = decode_events(value)
        fields["format"] = sniff(value).value
    except UndecodableMessage as exc:
        preview = base64.b64encode((value or b"")[:256]).decode()
        yield {**fields, "undecodable": str(exc), "value_base64": preview, "value_length": len(value or b"")}
        return
    for index, event in enumerate(events):
        yield {**fields, "index": index, "event": event}


def render(record: dict[str, Any], output: str) -> str:
    if output == "json":
        envelope = {name: value for name, value in record.items() if name != "event"}
        if "event" in record:
            envelope["event"] = json.loads(json_util.dumps(record["event"], json_options=CANONICAL))
        return json.dumps(envelope, separators=(",", ":"))
    where = f"{record['topic']}/{record['partition']}@{record['offset']}"
    if "undecodable" in record:
        return (f"--- {where} UNDECODABLE: {record['undecodable']} ({record['value_length']} bytes)"
                f"{_dead_letter_line(record['headers'])}\n"
                f"headers: {json.dumps(record['headers'])}\nvalue (base64, first 256 bytes): {record['value_base64']}")
    head = f"--- {where} #{record['index']} {record['format']} key={record['key']!r}"
    letter = _dead_letter_line(record["headers"])
    return head + letter + "\n" + json_util.dumps(record["event"], json_options=RELAXED, indent=2)


def _dead_letter_line(message_headers: dict[str, str]) -> str:
    reason = message_headers.get(headers.DLQ_REASON)
    if reason is None:
        return ""
    source = (f"{message_headers.get(headers.DLQ_TOPIC)}/{message_headers.get(headers.DLQ_PARTITION)}"
              f"@{message_headers.get(headers.DLQ_OFFSET)}")
    return (f"\ndead letter: {reason} from {source} at {message_headers.get(headers.DLQ_TIME)}: "
            f"{message_headers.get(headers.DLQ_ERROR)}")


def _whole_value(reassembly: fragments.Reassembly, message: Message,
                 message_headers: dict[str, str]) -> tuple[bytes | None, int | None] | None:
    """The message's whole value and first offset; None while fragments are missing. Fragments that cannot be
    reassembled are shown as they are (undecodable)."""
    if not fragments.is_fragment(message_headers):
        reassembly.interrupted()
        return None, None
    try:
        whole = reassembly.add(message_headers, message.value() or b"", message.offset())
    except fragments.FragmentError:
        return None, None
    return None if whole is None else (whole.value, whole.first_offset)


def run_inspect(kafka: KafkaSettings, topic: str, partition: int | None, offset: int, limit: int | None,
                follow: bool, output: str, out: TextIO = sys.stdout, heartbeats: bool = False) -> int:
    brokers = kafka.brokers
    consumer = Consumer(kafka.client_config({"group.id": f"kafkashake-inspect-{uuid.uuid4().hex[:8]}",
                                             "enable.auto.commit": False, "enable.partition.eof": True}))
    try:
        metadata = consumer.list_topics(topic, timeout=15)
    except KafkaException as exc:
        raise FatalError(f"cannot reach Kafka at {brokers}: {exc}") from exc
    described = metadata.topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        consumer.close()
        raise FatalError(f"topic {topic!r} does not exist at {brokers}")
    chosen = [partition] if partition is not None else sorted(described.partitions)
    consumer.assign([TopicPartition(topic, p, offset) for p in chosen])
    printed = 0
    reassemblies: dict[int, fragments.Reassembly] = {}
    at_end: set[int] = set()
    idle_since = time.monotonic()
    try:
        while limit is None or printed < limit:
            message = consumer.poll(0.5)
            if message is None:
                if not follow and time.monotonic() - idle_since > IDLE_END_S:
                    break
                continue
            idle_since = time.monotonic()
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                    if not follow and at_end >= set(chosen):
                        break
                    continue
                raise FatalError(f"Kafka error while reading {topic}: {error}")
            at_end.discard(message.partition())
            message_headers = headers.as_dict(message.headers())
            if message_headers.get(headers.HEARTBEAT) == "true" and not heartbeats:
                continue
            whole = _whole_value(reassemblies.setdefault(message.partition(), fragments.Reassembly()), message,
                                 message_headers)
            if whole is None:
                continue
            for record in describe_message(message, *whole):
                print(render(record, output), file=out, flush=True)
            printed += 1
    finally:
        consumer.close()
    return printed
