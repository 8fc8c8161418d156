"""``embed-server demo`` is a tour a person can repeat: it prints real commands (that parse, and
that run again afterwards), keeps what they use, and shows each thing it says it shows."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from edge_client.cli import build_parser as edge_parser
from server.cli import build_parser as server_parser

REPO = Path(__file__).resolve().parent.parent
MODULES = {"embed-server": "server", "edge-client": "edge_client"}


def _program(argv: list[str]) -> tuple[str, list[str]]:
    """(name, arguments) of a printed command: ``embed-server ...`` or ``python -m server ...``."""
    if argv[0] in MODULES:
        return argv[0], argv[1:]
    assert argv[1] == "-m" and argv[2] in MODULES.values(), argv
    return next(name for name, module in MODULES.items() if module == argv[2]), argv[3:]


def test_the_demo_prints_commands_a_person_can_run_and_keeps_what_they_use(tmp_path: Path) -> None:
    root = tmp_path / "tour"
    demo = [sys.executable, "-m", "server", "demo", "--dir", str(root)]
    result = subprocess.run(demo, capture_output=True, text=True, timeout=900)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]

    commands = [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("$ ")]
    named = [_program(argv) for argv in commands]
    assert [(name, args[0]) for name, args in named] == [
        ("embed-server", "serve"), ("embed-server", "ingest"), ("embed-server", "ingest"),
        ("edge-client", "init"), ("edge-client", "sync"),
        ("edge-client", "search"), ("edge-client", "search"), ("edge-client", "search"),
        ("edge-client", "search"), ("edge-client", "search"),
    ]  # fmt: skip
    for name, args in named:  # every printed command is one the real command lines accept
        (server_parser() if name == "embed-server" else edge_parser()).parse_args(args)
    serve = named[0][1]
    assert serve[serve.index("--data-dir") + 1] == str(root / "data")

    # What the tour says it shows: every document embedded, then every one a content-hash hit;
    # a fitted projection; auto answering on the device, then asking the server; then degraded.
    assert "56 docs into 'demo': 56 embedded, 0 cached, 0 failed" in out
    assert "56 docs into 'demo': 0 embedded, 56 cached, 0 failed" in out
    assert re.search(r"installed edge bundle edge-\w+ \(all-MiniLM-L6-v2, rotation projection, 128 dims", out)
    assert "synced 'demo' (full resync): 56 upserts" in out
    sources = re.findall(r"^source: .*$", out, flags=re.MULTILINE)
    assert sources[:3] == ["source: local", "source: server", "source: local"]
    assert re.fullmatch(
        r"source: server \(top local score 0\.\d+ is below the threshold 0\.\d+\)", sources[3]
    )
    assert sources[4].startswith(
        "source: local DEGRADED (comprehensive results requested; server failed: server at"
    )
    assert "unreachable (connection refused)" in sources[4]
    assert out.count("astro-3") >= 3  # the planet query's top hit, locally, on the server, degraded

    # Kept after exit, where the demo said: the store, the edge home, the server's log.
    assert f"Everything is kept in {root}" in out
    assert (root / "data" / "store").is_dir() and (root / "edge" / "config.json").is_file()
    assert "serving" in (root / "server.log").read_text()

    # Run a printed command again, as a person would paste it: the same answer.
    local = next(argv for argv in commands if "local" in argv and "search" in argv)
    name, args = _program(local)
    program = shutil.which(name)
    argv = [program, *args] if program else [sys.executable, "-m", MODULES[name], *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's code, also for a console script
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("source: local\n 1. ") and again.stdout in out


def test_the_demo_keeps_a_previous_tour_whose_store_a_server_still_holds(tmp_path: Path) -> None:
    """A server started by hand on the demo's data dir (as the demo suggests) holds its store:
    a second demo must not delete it from under that server (its later writes would be lost)."""
    from server.commands.demo import MARKER, _prepare
    from server.store import open_store

    root = tmp_path / "tour"
    assert _prepare(root) is None
    store = open_store(root / "data")  # stands for the server: it holds the store's lock
    try:
        problem = _prepare(root)
        assert problem is not None and "in use by process" in problem and str(os.getpid()) in problem
        assert (root / MARKER).is_file() and (root / "data" / "store").is_dir()
    finally:
        store.close()
    assert _prepare(root) is None  # released: replaced as before
    assert not (root / "data").exists()
