"""``embed-server demo``: the whole system end to end on the sample corpus, in about a minute.

Starts a real server (default model) on a free port with a temporary data directory, ingests
server/samples/sample_corpus.jsonl through the Ingest RPC (``embed-server ingest``), fetches
the edge bundle (``edge-client init``), syncs the collection (``edge-client sync``), searches
locally and through the server, stops the server, and searches once more: the edge answers
on its own, flagged degraded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from server.launch import free_port, serve_command, wait_serving

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "sample_corpus.jsonl"
COLLECTION = "demo"
QUERIES = (
    "how do astronomers find planets around other stars",
    "my home wifi is slow",
    "keeping fresh basil from wilting",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="store directory (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory afterwards")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the server")


def _step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def _run(*args: str) -> None:
    print("$ " + " ".join(a if " " not in a else repr(a) for a in args[2:]), flush=True)
    subprocess.run([sys.executable, *args], check=True)


def run(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="embed-demo-"))
    data_dir = Path(args.data_dir) if args.data_dir else root / "data"
    home = root / "edge"
    port = free_port()
    address = f"127.0.0.1:{port}"
    log_path = root / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    _step(f"starting the server on {address} (data in {data_dir}; log {log_path})")
    print("first run exports the model to ONNX for the edge bundle (tens of seconds)", flush=True)
    started = time.monotonic()
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            serve_command(port, data_dir),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        try:
            wait_serving(address, server, args.timeout)
        except Exception as exc:
            print(f"server failed to start ({exc}); last log lines:", file=sys.stderr)
            print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
            return 1
        print(f"serving after {time.monotonic() - started:.0f}s", flush=True)
        _step("ingesting the sample corpus through the Ingest RPC")
        _run("-m", "server", "ingest", str(SAMPLE), "--collection", COLLECTION, "--server", address)
        _step("edge: fetch and verify the bundle, then sync the collection")
        _run("-m", "edge_client", "init", "--server", address, "--home", str(home))
        _run("-m", "edge_client", "sync", "--collection", COLLECTION, "--home", str(home))
        for query in QUERIES:
            for mode in ("local", "server"):
                _step(f"{mode} search: {query!r}")
                _run(
                    "-m", "edge_client", "search", query, "--collection", COLLECTION, "--home", str(home),
                    "--mode", mode, "--k", "3",
                )  # fmt: skip
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    _step("server stopped: the edge still answers (auto mode asks the server, falls back, flags it)")
    _run(
        "-m", "edge_client", "search", QUERIES[0], "--collection", COLLECTION, "--home", str(home),
        "--mode", "auto", "--comprehensive", "--timeout", "2", "--k", "3",
    )  # fmt: skip
    if args.keep or args.data_dir:
        print(f"\nkept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0
