"""Every real change event in the fixture corpus that carries a document or an update description, replayed
through the consumer's decoder and update code. Driver-spec matchers are patterns, not data: skipped."""
from __future__ import annotations

from typing import Any

import bson
import pytest
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions

from conftest import load_fixture_lines
from kafkashake.consumer.decoder import decode_message
from kafkashake.consumer.document_update import apply_update

EXACT = CodecOptions(uuid_representation=UuidRepresentation.UNSPECIFIED)
EVENTS = [e for e in load_fixture_lines("change_events.jsonl") if "MATCHER" not in e["_fixture"]["kind"]]
WITH_DATA = [e for e in EVENTS if "fullDocument" in e or "updateDescription" in e]


def components(description: dict, path: str) -> list[Any]:
    explicit = (description.get("disambiguatedPaths") or {}).get(path)
    return list(explicit) if explicit is not None else path.split(".")


def build_preimage(description: dict) -> dict[str, Any]:
    """A document in which every path the update names exists, so its effect can be read back."""
    document: dict[str, Any] = {"_id": 100}
    paths = list(description.get("updatedFields") or {}) + list(description.get("removedFields") or [])
    paths += [t["field"] for t in description.get("truncatedArrays") or []]
    for path in paths:
        parts = components(description, path)
        container: Any = document
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            following = None if last else parts[index + 1]
            child: Any = [] if isinstance(following, int) else {}
            if last:
                child = [0, 1, 2, 3, 4] if any(t["field"] == path for t in description.get("truncatedArrays") or []) else "old"
            if isinstance(container, list):
                while len(container) <= part:
                    container.append(None)
                if not isinstance(container[part], (dict, list)) or last:
                    container[part] = child
                container = container[part]
            else:
                if not isinstance(container.get(part), (dict, list)) or last:
                    container[part] = child
                container = container[part]
    return document


def read(document: Any, parts: list[Any]) -> Any:
    for part in parts:
        document = document[part]
    return document


@pytest.mark.parametrize("event", WITH_DATA, ids=[e["_fixture"]["case"] for e in WITH_DATA])
def test_change_event_replays(event: dict) -> None:
    fields = {k: v for k, v in event.items() if k != "_fixture"}
    fields.setdefault("clusterTime", bson.Timestamp(1, 1))
    [decoded] = decode_message(bson.encode(fields, codec_options=EXACT), "t", 0, 0)
    operation = decoded.fields
    kind = event["operationType"]
    if kind == "insert":
        assert operation["op"] == "i" and operation["o"] == event["fullDocument"]
    elif kind == "replace":
        after = apply_update({"_id": event["documentKey"]["_id"], "stale": True}, operation["o"], operation.get("o_form"))
        assert after == event["fullDocument"], "a replace drops fields absent from the new document"
    else:
        description = event["updateDescription"]
        before = build_preimage(description)
        after = apply_update(before, operation["o"], operation.get("o_form"))
        for path, value in (description.get("updatedFields") or {}).items():
            assert read(after, components(description, path)) == value
        for path in description.get("removedFields") or []:
            parts = components(description, path)
            assert parts[-1] not in read(after, parts[:-1])
        for truncation in description.get("truncatedArrays") or []:
            assert len(read(after, components(description, truncation["field"]))) == truncation["newSize"]


def test_every_non_matcher_event_decodes_or_is_passed_over() -> None:
    ops = []
    for event in EVENTS:
        fields = {k: v for k, v in event.items() if k != "_fixture"}
        fields.setdefault("clusterTime", bson.Timestamp(1, 1))
        ops.extend(e.op for e in decode_message(bson.encode(fields, codec_options=EXACT), "t", 0, 0))
    assert set(ops) <= {"i", "u", "d", "c", "invalidate"}
    assert "c" in ops and "invalidate" in ops
