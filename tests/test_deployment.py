"""The deployment kit, validated statically (no Docker engine here): Compose against the Compose Specification,
every setting it passes against the CLI itself, Prometheus against the services, the Dockerfile against the
package, and the README's configuration reference against the CLI."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from prometheus_client import CollectorRegistry

from kafkashake import config_reference
from kafkashake.demo import embedded
from kafkashake.runtime.http_api import ProcessEndpoint

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "tests" / "fixtures" / "reference" / "compose-spec.json"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SERVICE_COMMANDS = {"producer": ("producer", "run"), "consumer": ("consumer", "run")}


def dockerfile_instructions(name: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.split(None, 1)[:1] == [name]]


def exec_form(argument: str) -> list[str]:
    return json.loads(argument) if argument.startswith("[") else shlex.split(argument)


def test_compose_file_validates_against_the_compose_specification() -> None:
    if not SCHEMA.exists():
        pytest.fail(f"Compose Specification schema not found at {SCHEMA}")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(COMPOSE), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_compose_has_the_whole_stack_with_health_gates_and_named_volumes() -> None:
    services = COMPOSE["services"]
    assert {"mongo-source", "mongo-dest", "kafka", "producer", "consumer", "prometheus", "grafana"} <= set(services)
    assert "--replSet" in services["mongo-source"]["command"]
    assert "rs.initiate" in " ".join(services["mongo-source"]["healthcheck"]["test"])
    assert services["kafka"]["image"].startswith("apache/kafka") and \
        "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    for name in ("mongo-source", "mongo-dest", "kafka"):
        assert "healthcheck" in services[name], name
    assert services["producer"]["depends_on"] == {"mongo-source": {"condition": "service_healthy"},
                                                  "kafka": {"condition": "service_healthy"}}
    assert services["consumer"]["depends_on"]["kafka"] == {"condition": "service_healthy"}
    assert services["grafana"]["profiles"] == ["grafana"]
    for name in ("mongo-source", "mongo-dest", "kafka", "prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert source.startswith("./") or source in COMPOSE["volumes"], (name, volume)
    for name in ("producer", "consumer"):
        assert services[name]["image"] == "kafkashake:latest" and services[name]["build"] == "."


def test_no_credentials_are_written_in_compose() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"mongodb(\+srv)?://[^/\s]*:[^@/\s]*@", text), "a connection string with a password"
    for name, service in COMPOSE["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            sensitive = re.search(r"PASSWORD|TOKEN|SECRET|_URI$", variable) and not variable.endswith("__FILE")
            if sensitive:  # only ever interpolated from the environment
                assert re.fullmatch(r"\$\{[A-Z_]+(:-[^}]*)?\}", str(value)), (name, variable, value)
    grafana = COMPOSE["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("/run/secrets/")


@pytest.mark.parametrize("service", sorted(SERVICE_COMMANDS))
def test_every_setting_compose_passes_exists_in_the_cli(service: str) -> None:
    definition = COMPOSE["services"][service]
    assert tuple(definition["command"]) == SERVICE_COMMANDS[service]
    known = config_reference.environment_variables(*SERVICE_COMMANDS[service])
    passed = {name for name in definition["environment"] if name.startswith("KAFKASHAKE_")}
    assert passed and passed <= known, passed - known
    flags = [arg for arg in definition["command"] if arg.startswith("-")]
    options = {opt for option in config_reference.options(*SERVICE_COMMANDS[service]) for opt in option.opts}
    assert set(flags) <= options


def test_every_setting_the_dockerfile_sets_exists_for_both_processes() -> None:
    set_in_image = set(re.findall(r"\b(KAFKASHAKE_[A-Z_]+)=", " ".join(dockerfile_instructions("ENV"))))
    assert set_in_image
    for path in SERVICE_COMMANDS.values():
        assert set_in_image <= config_reference.environment_variables(*path), path
    healthcheck = " ".join(dockerfile_instructions("HEALTHCHECK"))
    healthcheck_env = set(re.findall(r"KAFKASHAKE_[A-Z_]+", (ROOT / "command" / "cli.py").read_text().split(
        'def healthcheck(')[1].split("def ")[0])) | set(re.findall(r"KAFKASHAKE_[A-Z_]+", healthcheck))
    known = set().union(*(config_reference.environment_variables(*p) for p in SERVICE_COMMANDS.values()))
    assert healthcheck_env <= known, healthcheck_env - known


def test_prometheus_scrapes_both_services_on_their_metrics_ports() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets: set[str] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets |= set(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            targets |= {f"{name}:{dns['port']}" for name in dns["names"]}
    services = COMPOSE["services"]
    producer_port = services["producer"]["environment"]["KAFKASHAKE_PRODUCER_METRICS_PORT"]
    consumer_port = services["consumer"]["environment"]["KAFKASHAKE_CONSUMER_METRICS_PORT"]
    assert {f"producer:{producer_port}", f"consumer:{consumer_port}"} <= targets
    mounted = {volume.split(":")[1] for volume in services["prometheus"]["volumes"]}
    assert "/etc/prometheus/alerts.yml" in mounted and config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_dockerfile_is_multi_stage_slim_non_root_and_builds_only_the_declared_packages() -> None:
    bases = dockerfile_instructions("FROM")
    assert len(bases) >= 2 and all("slim" in base for base in bases)
    user = dockerfile_instructions("USER")
    assert user and user[-1] not in ("root", "0")
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
    copied = {argument.split()[0].rstrip("/") for argument in dockerfile_instructions("COPY")
              if not argument.startswith("--from")}
    assert copied - {"pyproject.toml", "README.md"} == declared
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("tests/", ".venv*", "**/__pycache__", ".git"):
        assert needed in ignored, needed


def test_dockerfile_entrypoint_and_healthcheck_reach_real_commands_and_endpoints() -> None:
    assert exec_form(dockerfile_instructions("ENTRYPOINT")[0]) == ["kafkashake"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "kafkashake" in scripts
    healthcheck = dockerfile_instructions("HEALTHCHECK")[0]
    command = exec_form(healthcheck.split("CMD", 1)[1].strip())
    assert command[:2] == ["kafkashake", "healthcheck"]
    run = [sys.executable, "-m", "kafkashake", *command[1:]]

    endpoint = ProcessEndpoint(CollectorRegistry(), lambda: {}, lambda: (True, "ok"), lambda body: {}, None)
    port = endpoint.serve("127.0.0.1", 0)
    try:
        healthy = subprocess.run(run, env={"KAFKASHAKE_CONSUMER_METRICS_PORT": str(port), "PATH": ""},
                                 capture_output=True, text=True, timeout=60)
        assert healthy.returncode == 0, healthy.stderr
    finally:
        endpoint.close()
    closed = embedded.free_port()
    unhealthy = subprocess.run([*run, "--url", f"http://127.0.0.1:{closed}"], capture_output=True, text=True,
                               timeout=60)
    assert unhealthy.returncode == 1 and "no healthy kafkashake process" in unhealthy.stderr


def test_readme_configuration_reference_is_generated_from_the_cli() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(config_reference.START), readme.index(config_reference.END) + len(config_reference.END)
    assert readme[start:end] == config_reference.render(), (
        "the README's configuration reference is stale: run python -m kafkashake.config_reference --write README.md")
    for section in ("### With Compose", "### Pointing at existing clusters", "### Scaling consumers",
                    "### Sizing partitions", "### Upgrading", "### Configuration reference"):
        assert section in readme, section
