"""The shape of the code: one import root, no bare top-level imports, small files and functions."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("command", "producer", "consumer", "schemas", "oplog", "runtime")
BARE = re.compile(r"^\s*(?:from|import)\s+(producer|consumer|schemas|oplog|runtime)\b", re.M)
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def product_files() -> list[Path]:
    return [path for folder in PRODUCT for path in (ROOT / folder).rglob("*.py")]


def test_the_wheel_installs_one_top_level_package_and_no_test_helpers(tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("kafkashake-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert {entry for entry in top if not entry.endswith(".dist-info")} == {"kafkashake"}
    assert "kafkashake/demo/secantusd_launcher.py" in names, "the demo's stand-ins ship: the demo needs them"
    assert not [name for name in names if "apache_kafka" in name or "/tests/" in name or "conftest" in name]
    assert "kafkashake/schemas/raw_batch.avsc" in names and "kafkashake/schemas/compat/raw_batch.v1.avsc" in names


def test_nothing_imports_a_bare_top_level_name() -> None:
    everything = [*product_files(), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    offenders = [str(path.relative_to(ROOT)) for path in everything if BARE.search(path.read_text())]
    assert not offenders


def test_the_packages_import_from_anywhere(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", "import kafkashake.producer, kafkashake.consumer"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_product_files_and_functions_stay_small() -> None:
    long_files, long_functions = [], []
    for path in product_files():
        text = path.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert not long_files, long_files
    assert not long_functions, long_functions
