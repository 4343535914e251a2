"""`kafkashake verify`: is the destination right? Compares every replicated namespace and, with --live, rechecks
each difference once the consumer has applied past the source's position at the time it was found, so changes
still in flight are not reported.

Exit codes: 0 equal; 1 persistent differences; 2 invalid options; 3 the check could not finish (a server out of
reach, or --live waited --live-timeout-seconds for the consumer)."""
from __future__ import annotations

import datetime as dt
import enum
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import bson
from bson.timestamp import Timestamp
from pymongo import MongoClient

from kafkashake import options, verification
from kafkashake.oplog import position
from kafkashake.oplog.namespaces import NamespaceMap
from kafkashake.options import Opt
from kafkashake.runtime import mongo
from kafkashake.runtime.secrets import redact
from kafkashake.verification import (EXIT_DIFFERENT, EXIT_EQUAL, EXIT_INCOMPLETE, EXIT_OPTIONS, RECHECK_ROUNDS,
                                     Difference, NamespaceResult)
from kafkashake.verify_report import json_report, text_report

PROGRESS_EVERY_S = 2.0
LIVE_POLL_S = 0.5
# A consumer checkpoint not written for this long belongs to a partition nobody consumes any more (an old topic).
STALE_CHECKPOINT_S = 600


class Mode(str, enum.Enum):
    COUNT = "count"
    HASH = "hash"
    FULL = "full"


class Output(str, enum.Enum):
    TEXT = "text"
    JSON = "json"


OPTIONS = [
    Opt("source_uri", Optional[str], None, ("--source-uri",), "MongoDB connection string of the source.",
        extra={"callback": options.mongo_uri}),
    Opt("source_uri_file", Optional[Path], None, ("--source-uri-file",), "File holding the source connection string."),
    Opt("dest_uri", Optional[str], None, ("--dest-uri",), "MongoDB connection string of the destination.",
        extra={"callback": options.mongo_uri}),
    Opt("dest_uri_file", Optional[Path], None, ("--dest-uri-file",), "File holding the destination connection "
        "string."),
    options.FILTERS[0], options.FILTERS[1],
    Opt("transform_namespace", str, "", ("--transform-namespace",), "The consumer's renames: "
        "'fromDb.fromColl:toDb.toColl;fromDb2:toDb2'."),
    Opt("mode", Mode, Mode.HASH, ("--mode",), "count: collections, counts and indexes; hash: also every document, "
        "ranges of documents hashed on each side and only differing ranges compared document by document; full: "
        "every document compared field by field.", env_name=None),
    Opt("range_size", int, 1000, ("--range-size",), "Documents per hashed _id range (hash mode).", env_name=None,
        extra={"min": 1}),
    Opt("ignore_field_order", bool, False, ("--ignore-field-order",), "Compare documents with their fields sorted "
        "(for a destination that does not keep field order).", env_name=None),
    Opt("live", bool, False, ("--live",), "Replication is running: recheck each difference once the consumer has "
        "applied past the source's position when it was found; report only those that persist.", env_name=None),
    Opt("live_timeout_seconds", float, 300.0, ("--live-timeout-seconds",), "How long --live waits for the consumer "
        "before giving up with exit 3.", env_name=None, extra={"min": 1}),
    Opt("checkpoint_db", str, "kafkashake", ("--checkpoint-db",), "Destination database of the consumer's "
        "checkpoint (--live), and a database never compared; the source's producer checkpoint database of the same "
        "name is not compared either."),
    Opt("group", Optional[str], None, ("--group",), "The consumer group whose checkpoint --live reads (default: the "
        "only one there).", env_name=None),
    Opt("output", Output, Output.TEXT, ("--output",), "text, or one JSON document.", env_name=None),
    Opt("metrics_port", Optional[int], None, ("--metrics-port",), "Serve the result as Prometheus metrics on this "
        "port (with --every, between runs too).", env_name="verify_metrics_port", extra={"min": 0, "max": 65535}),
    Opt("every", Optional[float], None, ("--every",), "Run again every this many seconds, for ever (with "
        "--metrics-port, a periodic check to alert on).", env_name=None, extra={"min": 1}),
]


@dataclass
class Verification:
    mode: Mode
    range_size: int
    ignore_field_order: bool
    results: list[NamespaceResult] = field(default_factory=list)
    bytes_read: int = 0
    rechecked: int = 0
    waited_s: float = 0.0

    @property
    def equal(self) -> bool:
        return all(result.ok for result in self.results)

    @property
    def exit_code(self) -> int:
        if self.equal:
            return EXIT_EQUAL
        return EXIT_DIFFERENT if any(result.confirmed for result in self.results) else EXIT_INCOMPLETE


class Progress:
    """Documents compared per second, percent and ETA, on stderr, at most every two seconds."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.done, self.quiet = total, 0, quiet
        self.started = self.shown = time.monotonic()

    def add(self, documents: int) -> None:
        self.done += documents
        now = time.monotonic()
        if self.quiet or now - self.shown < PROGRESS_EVERY_S:
            return
        self.shown = now
        rate = self.done / max(now - self.started, 1e-6)
        percent = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate else 0.0
        print(f"verify: {self.done:,} of {self.total:,} documents ({percent:.0f} %), {rate:,.0f}/s, "
              f"ETA {eta:.0f} s", file=sys.stderr, flush=True)


def verify_namespace(source: MongoClient, dest: MongoClient, ns: str, dest_ns: str, run: Verification,
                     progress: Progress) -> NamespaceResult:
    result = NamespaceResult(ns, dest_ns)
    source_collection = verification.collection_of(source, ns)
    result.source_count = source_collection.count_documents({})
    if not verification.exists(dest, dest_ns):
        result.exists = False
        return result
    dest_collection = verification.collection_of(dest, dest_ns)
    result.dest_count = dest_collection.count_documents({})
    result.index_problems = verification.compare_indexes(
        verification.collection_of(source, ns, verification.EXACT),
        verification.collection_of(dest, dest_ns, verification.EXACT))
    if run.mode is Mode.COUNT:
        return result
    result.documents_checked = True

    def read(count: int) -> None:
        run.bytes_read += count

    source_docs = verification.documents(source_collection, read)
    dest_docs = verification.documents(dest_collection, read)
    size = run.range_size if run.mode is Mode.HASH else 1000
    for left, right in verification.ranges(source_docs, dest_docs, size):
        if (run.mode is Mode.HASH and len(left) == len(right)
                and verification.digest(left, run.ignore_field_order) == verification.digest(right, run.ignore_field_order)):
            result.compared += len(left)
            result.equal += len(left)
        else:
            verification.compare_range(result, left, right, run.ignore_field_order)
        progress.add(len(left))
    return result


class NothingToCompare(Exception):
    pass


def verify_once(source: MongoClient, dest: MongoClient, values: dict[str, Any]) -> Verification:
    run = Verification(values["mode"], values["range_size"], values["ignore_field_order"])
    scope = options.namespace_filter(values["filter_namespace_white"], values["filter_namespace_black"])
    own = {values["checkpoint_db"], "kafkashake_conflict"}
    namespaces = verification.replicated_namespaces(source, scope, NamespaceMap.parse(values["transform_namespace"]),
                                                    own)
    strays = verification.destination_only(dest, namespaces, scope, own)
    if not namespaces and not strays and values["filter_namespace_white"]:
        raise NothingToCompare(f"no collection on either side matches --filter-namespace-white "
                               f"{values['filter_namespace_white']!r}")
    total = sum(verification.collection_of(source, ns).estimated_document_count() for ns, _ in namespaces)
    progress = Progress(total, quiet=values["output"] is Output.JSON)
    for ns, dest_ns in namespaces:
        run.results.append(verify_namespace(source, dest, ns, dest_ns, run, progress))
    for dest_ns in strays:
        run.results.append(NamespaceResult(dest_ns, dest_ns, source_exists=False,
                                           dest_count=verification.collection_of(dest, dest_ns).count_documents({})))
    if values["live"] and not run.equal:
        recheck_live(source, dest, run, values, progress)
    return run


# ---------------------------------------------------------------------------------------------- --live


def newest_source_position(source: MongoClient) -> Timestamp:
    newest = source.local["oplog.rs"].find_one({}, sort=[("$natural", -1)], projection={"ts": 1})
    if newest is None:
        raise RuntimeError("the source has no oplog: --live needs a replica set")
    return newest["ts"]


def consumer_applied_through(dest: MongoClient, checkpoint_db: str, group: str | None) -> Timestamp | None:
    """Everything at or before this source position is applied in every partition of the consumer group."""
    fresh = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(seconds=STALE_CHECKPOINT_S)
    checkpoints = list(dest[checkpoint_db]["consumer_checkpoint"].find(
        {"updated_at": {"$gte": fresh}, **({} if group is None else {"group": group})}))
    groups = {document.get("group") for document in checkpoints}
    if not checkpoints:
        raise RuntimeError(f"no consumer checkpoint in {checkpoint_db}.consumer_checkpoint"
                                 + (f" for group {group!r}" if group else "") + ": is the consumer running? "
                                 "Give --checkpoint-db and --group as the consumer has them")
    if group is None and len(groups) > 1:
        raise RuntimeError(f"several consumer groups checkpoint here ({', '.join(sorted(map(str, groups)))}): "
                                 "give --group")
    watermarks = [document.get("watermark") for document in checkpoints]
    if any(mark is None for mark in watermarks):
        return None
    return min(watermarks)


def recheck_live(source: MongoClient, dest: MongoClient, run: Verification, values: dict[str, Any],
                 progress: Progress) -> None:
    """Recheck each difference once the consumer has applied past the source's position after reading the
    source's document: it was in flight if the destination now holds that document (or the source's newer one);
    it persists if it still differs while the source's document stayed the same. A document that changes on the
    source in every one of RECHECK_ROUNDS rounds is reported as unsettled."""
    started = time.monotonic()
    deadline = started + values["live_timeout_seconds"]
    _wait_for_consumer(dest, values, newest_source_position(source), deadline)
    for index, result in enumerate(run.results):
        if not result.exists or not result.source_exists:  # a collection created or dropped in flight?
            if not (verification.exists(source, result.ns) and verification.exists(dest, result.dest_ns)):
                continue
            result = run.results[index] = verify_namespace(source, dest, result.ns, result.dest_ns, run, progress)
        if result.ok:
            continue
        if not result.all_kept:
            result.unsettled_note = f"over {verification.MAX_KEPT:,} differences: reported without a recheck"
            continue
        _recheck_documents(source, dest, run, result, values, deadline)
    run.waited_s = round(time.monotonic() - started, 1)


def _recheck_documents(source: MongoClient, dest: MongoClient, run: Verification, result: NamespaceResult,
                       values: dict[str, Any], deadline: float) -> None:
    ignoring = run.ignore_field_order
    pending = {_id_key(d.id): d for d in result.differences}
    confirmed: list[Difference] = []
    for _ in range(RECHECK_ROUNDS):
        if not pending:
            break
        before = {key: _raw(source, result.ns, d.id) for key, d in pending.items()}
        _wait_for_consumer(dest, values, newest_source_position(source), deadline)
        for key, difference in list(pending.items()):
            run.rechecked += 1
            now_source, now_dest = _raw(source, result.ns, difference.id), _raw(dest, result.dest_ns, difference.id)
            if _same(now_source, now_dest, ignoring) or _same(before[key], now_dest, ignoring):
                result.equal += difference.kind == "different"
                del pending[key]
            elif now_source == before[key]:
                confirmed.append(_difference(result.ns, difference.id, now_source, now_dest, ignoring))
                del pending[key]
    result.unsettled = len(pending)
    _replace_differences(result, confirmed + list(pending.values()))


def _wait_for_consumer(dest: MongoClient, values: dict[str, Any], seen_at: Timestamp, deadline: float) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"--live-timeout-seconds ({values['live_timeout_seconds']:.0f} s) passed while rechecking")
    while True:
        applied = consumer_applied_through(dest, values["checkpoint_db"], values["group"])
        if applied is not None and applied >= seen_at:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the consumer did not apply up to {position.text(seen_at)} within "
                               f"{values['live_timeout_seconds']:.0f} s (applied through "
                               f"{position.text(applied) if applied else 'nothing known'}); differences left "
                               "unconfirmed")
        time.sleep(LIVE_POLL_S)


def _id_key(document_id: Any) -> bytes:
    return bson.encode({"_id": document_id})


def _raw(client: MongoClient, ns: str, document_id: Any) -> bytes | None:
    found = verification.collection_of(client, ns).find_one({"_id": document_id})
    return None if found is None else bytes(found.raw)


def _same(source: bytes | None, dest: bytes | None, ignore_field_order: bool) -> bool:
    if source is None or dest is None:
        return source is dest
    return verification.canonical(source, ignore_field_order) == verification.canonical(dest, ignore_field_order)


def _difference(ns: str, document_id: Any, source: bytes | None, dest: bytes | None,
                ignore_field_order: bool) -> Difference:
    if source is None:
        return Difference(ns, document_id, "extra")
    if dest is None:
        return Difference(ns, document_id, "missing")
    found = verification.compare_documents(source, dest, ignore_field_order)
    return Difference(ns, document_id, "different", *(found or ("(bytes)", None, None)))


def _replace_differences(result: NamespaceResult, confirmed: list[Difference]) -> None:
    result.missing = result.extra = result.different = 0
    result.differences = []
    for difference in confirmed:
        result.record(difference)


# ---------------------------------------------------------------------------------------------- output


def clients(values: dict[str, Any]) -> tuple[MongoClient, MongoClient]:
    source = options.uri_from(values["source_uri"], values["source_uri_file"], "--source-uri")
    dest = options.uri_from(values["dest_uri"], values["dest_uri_file"], "--dest-uri")
    return (mongo.connect(source.reveal(), "kafkashake-verify"),  # type: ignore[union-attr]
            mongo.connect(dest.reveal(), "kafkashake-verify"))  # type: ignore[union-attr]


def run_verify(values: dict[str, Any], on_result: Callable[[Verification | None], None]) -> int:
    while True:
        source = dest = None
        try:
            source, dest = clients(values)
            run = verify_once(source, dest, values)
        except NothingToCompare as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_OPTIONS
        except Exception as exc:  # noqa: BLE001  whatever stopped it, the check is not complete: never exit 0 or 1
            print(f"error: the check could not finish: {type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
            on_result(None)
            code = EXIT_INCOMPLETE
        else:
            on_result(run)
            print(json_report(run) if values["output"] is Output.JSON else "\n".join(text_report(run)), flush=True)
            code = run.exit_code
        finally:
            for client in (source, dest):
                if client is not None:
                    client.close()
        if values["every"] is None:
            return code
        time.sleep(values["every"])
