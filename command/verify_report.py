"""What `kafkashake verify` prints and serves: the text and JSON reports, and the Prometheus metrics."""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from bson import json_util

from kafkashake import verification
from kafkashake.runtime.secrets import redact
from kafkashake.verification import EXIT_INCOMPLETE, RECHECK_ROUNDS, Difference

if TYPE_CHECKING:
    from kafkashake.verify_command import Verification


def shown(value: Any) -> str:
    return redact(json_util.dumps(value, json_options=json_util.CANONICAL_JSON_OPTIONS))


def text_report(run: Verification) -> Iterator[str]:
    for result in run.results:
        target = result.ns if result.ns == result.dest_ns else f"{result.ns} -> {result.dest_ns}"
        if not result.exists:
            yield f"{target}: MISSING on the destination ({result.source_count} documents on the source)"
            continue
        if not result.source_exists:
            yield f"{target}: EXTRA on the destination ({result.dest_count} documents; no source collection maps to it)"
            continue
        state = "equal" if result.ok else "DIFFERENT"
        yield (f"{target}: {state}; source {result.source_count} documents, destination {result.dest_count}; "
               f"compared {result.compared}, equal {result.equal}, missing {result.missing}, extra {result.extra}, "
               f"different {result.different}")
        yield from (f"  {problem}" for problem in result.index_problems)
        if result.unsettled:
            yield (f"  {result.unsettled} of these changed on the source in each of {RECHECK_ROUNDS} rechecks: "
                   "unsettled, check again")
        if result.unsettled_note:
            yield f"  {result.unsettled_note}"
        if len(result.differences) > verification.MAX_REPORTED:
            yield f"  (the first {verification.MAX_REPORTED} of {len(result.differences)} shown)"
        for d in result.differences[:verification.MAX_REPORTED]:
            where = f"  {d.kind} _id {shown(d.id)}"
            yield where if d.kind != "different" else f"{where} at {d.path}: source {shown(d.source_value)}, " \
                                                      f"destination {shown(d.dest_value)}"
    verdict = "EQUAL" if run.equal else "DIFFERENT"
    yield (f"{verdict}: {len(run.results)} namespaces, mode {run.mode.value}, {run.bytes_read:,} document bytes read"
           + (f"; live recheck of {run.rechecked} documents waited {run.waited_s} s for the consumer"
              if run.rechecked else ""))


def json_report(run: Verification) -> str:
    def plain(difference: Difference) -> dict[str, Any]:
        return json.loads(shown(asdict(difference)))

    return json.dumps({
        "equal": run.equal, "mode": run.mode.value, "bytes_read": run.bytes_read, "rechecked": run.rechecked,
        "live_wait_seconds": run.waited_s,
        "namespaces": [{**{k: v for k, v in asdict(r).items() if k != "differences"}, "ok": r.ok,
                        "differences": [plain(d) for d in r.differences[:verification.MAX_REPORTED]]}
                       for r in run.results]})


def metrics_sink(port: int) -> Callable[[Verification], None]:
    """Serve each run's result on /metrics at `port`."""
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    registry = CollectorRegistry()
    equal = Gauge("kafkashake_verify_equal", "1 if the last check found the destination equal to the source.",
                  registry=registry)
    differences = Gauge("kafkashake_verify_differences", "Documents that differ, by namespace and kind "
                        "(missing, extra, different), and index problems.", ["namespace", "kind"], registry=registry)
    compared = Gauge("kafkashake_verify_documents_compared", "Documents compared in the last check.", ["namespace"],
                     registry=registry)
    finished = Gauge("kafkashake_verify_last_run_timestamp_seconds", "When the last check finished.",
                     registry=registry)
    read = Gauge("kafkashake_verify_bytes_read", "Document bytes the last check read from both sides.",
                 registry=registry)
    server, _ = start_http_server(port, registry=registry)
    print(f"verify: metrics on http://127.0.0.1:{server.server_port}/metrics", file=sys.stderr, flush=True)

    incomplete = Gauge("kafkashake_verify_incomplete", "1 if the last check could not finish (exit code 3).",
                       registry=registry)

    def publish(run: Verification | None) -> None:
        finished.set(time.time())
        if run is None:
            equal.set(0)
            incomplete.set(1)
            return
        incomplete.set(1 if run.exit_code == EXIT_INCOMPLETE else 0)
        differences.clear()
        compared.clear()
        for result in run.results:
            compared.labels(result.ns).set(result.compared)
            for kind in ("missing", "extra", "different"):
                differences.labels(result.ns, kind).set(getattr(result, kind))
            differences.labels(result.ns, "index").set(len(result.index_problems))
            differences.labels(result.ns, "collection").set(0 if result.exists and result.source_exists else 1)
        equal.set(1 if run.equal else 0)
        read.set(run.bytes_read)

    return publish
