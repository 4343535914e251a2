"""A third-party consumer of kafkashake topics, using only confluent-kafka, fastavro and pymongo's bson.

It decodes all three formats without looking at headers, oplog events and change events alike, puts fragmented
messages back together, passes over heartbeats, and prints one JSON line per event (`id` is the `_id`, or the
`documentKey` of a change event):
    {"partition": 3, "offset": 41, "format": "raw", "ns": "shop.orders", "op": "u",
     "ts": [1700000000, 7], "id": {"$oid": "65a1..."}}

Usage: python consume.py --brokers 127.0.0.1:9092 --topic cdc
It reads every partition from the beginning and stops once it has reached the end of each."""
import argparse
import hashlib
import io
import json
import struct
import sys
import uuid

import bson
import fastavro
from bson import json_util
from confluent_kafka import Consumer, KafkaError, TopicPartition

CANONICAL = json_util.JSONOptions(json_mode=json_util.JSONMode.CANONICAL)
DECODE = bson.CodecOptions(uuid_representation=bson.binary.UuidRepresentation.UNSPECIFIED)
JSON_OPTIONS = json_util.JSONOptions(uuid_representation=bson.binary.UuidRepresentation.UNSPECIFIED)


def events_of(value):
    """(format, [event, ...]) for one message value, recognised by its bytes."""
    if value.startswith(b"Obj\x01"):  # Avro Object Container File: a batch
        return "raw", [bson.decode(record["event"], DECODE) for record in fastavro.reader(io.BytesIO(value))]
    if len(value) >= 5 and struct.unpack_from("<i", value)[0] == len(value) and value[-1] == 0:
        return "bson", [bson.decode(value, DECODE)]  # checked before JSON: a BSON length byte can be '{'
    if value.lstrip()[:1] == b"{":
        event = json_util.loads(value, json_options=JSON_OPTIONS)
        if list(event) == ["kafkashake.bson"]:  # an event JSON cannot render exactly travels as BSON inside JSON
            event = bson.decode(event["kafkashake.bson"], DECODE)
        return "json", [event]
    raise ValueError(f"not a kafkashake message: {value[:16]!r}")


def describe(event):
    """(ns, op, ts, document id) of an oplog event or a change event (--fetch-method change_stream)."""
    if "operationType" in event:
        ns = event.get("ns") or {}
        name = ".".join(part for part in (ns.get("db"), ns.get("coll")) if part)
        return name, event["operationType"], event["clusterTime"], event.get("documentKey")
    document_id = event["o2"]["_id"] if event["op"] == "u" else event["o"]["_id"]
    return event["ns"], event["op"], event["ts"], document_id


class Fragments:
    """One partition's fragments (headers kafkashake.fragment.*) back into whole values."""

    def __init__(self):
        self.parts, self.first_offset = [], None

    def add(self, headers, value, offset):
        index, count = int(headers["kafkashake.fragment.index"]), int(headers["kafkashake.fragment.count"])
        if index == 0:  # a value left incomplete is sent again in full by the producer
            self.parts, self.first_offset = [], offset
        if index != len(self.parts):
            raise ValueError(f"fragment {index} at offset {offset} arrived without the ones before it")
        self.parts.append(value)
        if len(self.parts) < count:
            return None
        whole, self.parts = b"".join(self.parts), []
        if hashlib.sha256(whole).hexdigest() != headers["kafkashake.fragment.sha256"]:
            raise ValueError(f"fragments ending at offset {offset} do not reassemble to their SHA-256")
        return whole


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--topic", required=True)
    args = parser.parse_args()

    consumer = Consumer({"bootstrap.servers": args.brokers, "group.id": f"example-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    partitions = consumer.list_topics(args.topic, timeout=15).topics[args.topic].partitions
    consumer.assign([TopicPartition(args.topic, p, 0) for p in partitions])
    fragments, at_end = {p: Fragments() for p in partitions}, set()
    while len(at_end) < len(partitions):
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error() is not None:
            if message.error().code() == KafkaError._PARTITION_EOF:
                at_end.add(message.partition())
            continue
        at_end.discard(message.partition())
        headers = {name: (data or b"").decode() for name, data in message.headers() or []}
        if headers.get("kafkashake.heartbeat") == "true":  # no change: the producer's watermark
            continue
        value = message.value()
        if "kafkashake.fragment.index" in headers:
            value = fragments[message.partition()].add(headers, value, message.offset())
            if value is None:
                continue
        message_format, events = events_of(value)
        for event in events:
            ns, op, ts, document_id = describe(event)
            line = {"partition": message.partition(), "offset": message.offset(), "format": message_format,
                    "ns": ns, "op": op, "ts": [ts.time, ts.inc],
                    "id": json.loads(json_util.dumps(document_id, json_options=CANONICAL))}
            sys.stdout.write(json.dumps(line) + "\n")
    consumer.close()


if __name__ == "__main__":
    main()
