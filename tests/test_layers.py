"""The import layers of pyproject.toml hold, and the check that keeps them fails when someone breaks them:
an upward import (even inside a function) or a cycle between sibling modules planted in a copy of the
package is reported by name."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def package_copy(tmp_path) -> Path:
    """The package's sources and pyproject.toml in a fresh directory (no assets: imports only)."""
    shutil.copytree(ROOT / "lphi_edge", tmp_path / "lphi_edge", ignore=shutil.ignore_patterns("assets", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_tree_keeps_its_layers():
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Contracts: 2 kept, 0 broken." in proc.stdout


def test_the_runtime_never_names_the_exporter():
    offenders = [
        str(p.relative_to(ROOT))
        for p in [*(ROOT / "lphi_edge" / "runtime").rglob("*.py"), ROOT / "lphi_edge" / "assistant.py"]
        if "lphi_edge.export" in p.read_text()
    ]
    assert offenders == []


def _append(path: Path, code: str) -> None:
    path.write_text(path.read_text() + "\n\n" + code + "\n")


def test_an_upward_import_inside_a_function_is_refused(package_copy):
    _append(
        package_copy / "lphi_edge" / "format" / "manifest.py",
        "def _sneaky():\n    from lphi_edge.assistant import Assistant\n\n    return Assistant",
    )
    proc = lint_imports(package_copy)
    assert proc.returncode == 1
    assert "lphi_edge.format is not allowed to import lphi_edge.assistant" in proc.stdout
    assert "lphi_edge.format.manifest -> lphi_edge.assistant" in proc.stdout


def test_a_cycle_between_sibling_modules_is_refused(package_copy):
    # verify → exporter already holds (verify is a leaf of the workflow); exporter imports verify: a cycle
    _append(
        package_copy / "lphi_edge" / "export" / "verify.py", "def _sneaky():\n    from lphi_edge.export import exporter"
    )
    proc = lint_imports(package_copy)
    assert proc.returncode == 1
    assert "no import cycles between sibling packages or modules BROKEN" in proc.stdout
    assert ".verify -> .exporter" in proc.stdout or ".exporter -> .verify" in proc.stdout
