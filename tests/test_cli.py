"""The command line: precedence flag > environment > file > default, and exit code 2 for bad configuration."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kafkashake.cli import app

REQUIRED = ["--source-uri", "mongodb://127.0.0.1:1", "--brokers", "127.0.0.1:9", "--topic", "t"]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list:
    settings_seen: list = []

    class FakeRun:
        def __init__(self, settings, shutdown) -> None:
            settings_seen.append(settings)

        def run(self) -> None:
            return None

    import kafkashake.producer.run as producer_run

    monkeypatch.setattr(producer_run, "ProducerRun", FakeRun)
    return settings_seen


def run_cli(args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(app, args, env=env or {}, catch_exceptions=False)


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path, captured: list) -> None:
    config = tmp_path / "kafkashake.toml"
    config.write_text('name = "from-file"\npartitions = 3\nstart-position = "earliest"\n'
                      '[producer]\nkafka_property = { "linger.ms" = "7" }\n')
    result = run_cli(["producer", "run", *REQUIRED, "--config", str(config), "--partitions", "5"],
                     env={"KAFKASHAKE_NAME": "from-env"})
    assert result.exit_code == 0, result.output
    settings = captured[-1]
    assert settings.topics.partitions == 5, "flag beats file"
    assert settings.checkpoint.name == "from-env", "environment beats file"
    assert settings.source.start_position == "earliest", "file beats default"
    assert settings.kafka.properties == {"linger.ms": "7"}
    assert settings.checkpoint.db == "kafkashake", "default when nobody sets it"


def test_every_option_reads_its_environment_variable(captured: list) -> None:
    env = {"KAFKASHAKE_SOURCE_URI": "mongodb://h:1", "KAFKASHAKE_BROKERS": "k:9092", "KAFKASHAKE_TOPIC": "x",
           "KAFKASHAKE_PARTITION_BY": "collection", "KAFKASHAKE_START_POSITION": "1700000000,3"}
    result = run_cli(["producer", "run"], env=env)
    assert result.exit_code == 0, result.output
    settings = captured[-1]
    assert (settings.source.uri.reveal(), settings.kafka.brokers, settings.topics.template) == (
        "mongodb://h:1", "k:9092", "x")
    assert settings.topics.partition_by.value == "collection" and settings.source.start_position == "1700000000,3"


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--start-position", "yesterday"], "--start-position"),
        (["--partition-by", "shard"], "--partition-by"),
        (["--partitions", "0"], "--partitions"),
        (["-X", "linger.ms"], "-X"),
        (["--format", "xml"], "--format"),
        (["--json-mode", "loose"], "--json-mode"),
        (["--avro-codec", "lzma"], "--avro-codec"),
        (["--compression", "brotli"], "--compression"),
        (["--topic", "cdc.{database}"], "--topic"),
    ],
)
def test_invalid_values_exit_2_naming_the_option(extra: list[str], named: str) -> None:
    result = subprocess.run([sys.executable, "-m", "kafkashake", "producer", "run", *REQUIRED, *extra],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert named in result.stderr


def test_unknown_config_key_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('sourceuri = "mongodb://x"\n')
    result = subprocess.run([sys.executable, "-m", "kafkashake", "producer", "run", *REQUIRED, "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "sourceuri" in result.stderr and "source_uri" in result.stderr


def test_bad_uri_is_refused_without_printing_the_password() -> None:
    result = subprocess.run([sys.executable, "-m", "kafkashake", "consumer", "run", "--brokers", "k:1", "--topic", "t",
                             "--dest-uri", "http://admin:hunter22@host/"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--dest-uri" in result.stderr and "hunter22" not in result.stderr + result.stdout


def test_help_lists_every_command() -> None:
    for args in (["--help"], ["producer", "run", "--help"], ["consumer", "run", "--help"], ["demo", "--help"],
                 ["verify", "--help"]):
        result = run_cli(args, env={"COLUMNS": "250"})
        assert result.exit_code == 0
    producer_help = run_cli(["producer", "run", "--help"], env={"COLUMNS": "250"}).output
    for variable in ("KAFKASHAKE_SOURCE_URI", "KAFKASHAKE_BROKERS", "KAFKASHAKE_START_POSITION", "KAFKASHAKE_CONFIG"):
        assert variable in producer_help


@pytest.mark.parametrize("args", [[], ["--topic", "t", "--topic-pattern", "^t"], ["--topic-pattern", "(unclosed"]])
def test_consumer_needs_exactly_one_valid_subscription(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "kafkashake", "consumer", "run", "--brokers", "k:1",
                             "--dest-uri", "mongodb://h:1", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--topic" in result.stderr


@pytest.mark.parametrize("lanes", ["0", "17", "many"])
def test_write_lanes_are_auto_or_a_count(lanes: str) -> None:
    result = subprocess.run([sys.executable, "-m", "kafkashake", "consumer", "run", "--brokers", "k:1", "--topic", "t",
                             "--dest-uri", "mongodb://h:1", "--write-lanes", lanes],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--write-lanes" in result.stderr and "auto or a number from 1 to 16" in result.stderr


@pytest.mark.parametrize("flags, env, config, lanes", [
    ([], {}, "", 0),
    (["--write-lanes", "auto"], {}, "", 0),
    ([], {"KAFKASHAKE_WRITE_LANES": "8"}, "", 8),
    ([], {}, "write_lanes = 2\n", 2),
])
def test_write_lanes_are_measured_unless_a_count_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          flags: list[str], env: dict, config: str, lanes: int) -> None:
    import kafkashake.consumer.run as consumer_run

    seen: list = []

    class FakeRun:
        def __init__(self, settings, shutdown) -> None:
            seen.append(settings)

        def run(self) -> None:
            return None

    monkeypatch.setattr(consumer_run, "ConsumerRun", FakeRun)
    file = tmp_path / "kafkashake.toml"
    file.write_text(config)
    args = ["consumer", "run", "--brokers", "k:1", "--topic", "t", "--dest-uri", "mongodb://h:1", "--config", str(file)]
    run_cli(args + flags, env=env)
    assert seen and seen[0].destination.write_lanes == lanes
