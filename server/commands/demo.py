"""``embed-server demo``: a tour of the whole system that a person can repeat command by command.

Every step prints the real command it runs (``embed-server ...``, ``edge-client ...``, with the
paths and the port it uses), then its output. Everything lives in one directory that stays
after the demo (``./embed-demo`` unless ``--dir``): the server's store, the edge client's home
and the server's log. The tour: start a server, ingest the sample corpus (every document
embedded), ingest it again (every document a content-hash hit), fetch the edge bundle (the
server fits the edge projection on the stored vectors first), sync, search on the device and on
the server, watch ``auto`` answer on the device for a clear match and ask the server for a
query nothing local matches, then stop the server and see ``auto`` answer alone, flagged
degraded.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from server.launch import free_port, wait_serving

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "sample_corpus.jsonl"
COLLECTION = "demo"
MARKER = ".embed-demo"  # marks a directory this command made (and may therefore empty)
DEFAULT_PORT = 50051
# The sample corpus has 56 documents; the server fits the edge projection once it stores
# --edge-fit-min-vectors (default 256), so the demo lowers that to show a fitted projection.
FIT_MIN_VECTORS = 50
LOCAL_QUERY = "how do astronomers find planets around other stars"
CLEAR_QUERY = "keeping fresh basil from wilting"  # one sample document says just that
# Nothing in the sample corpus is about this: the best local score stays under the threshold
# auto search calibrates on the index, so auto asks the server.
OFF_TOPIC_QUERY = "child custody after a divorce"
PROGRAMS = {"embed-server": "server", "edge-client": "edge_client"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("embed-demo"),
        help="where the demo keeps the server's data, the edge client's home and the server log "
        "(default: ./embed-demo; a previous demo there is replaced)",
    )
    parser.add_argument(
        "--port", type=int, default=0, help=f"server port (default: {DEFAULT_PORT} if free, else a free one)"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the server")


def _program(name: str) -> list[str]:
    """How to type this program here: its console script when it is on PATH, else
    ``python -m MODULE`` with this interpreter."""
    return [name] if shutil.which(name) else [sys.executable, "-m", PROGRAMS[name]]


class _Tour:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.step = 0

    def say(self, title: str) -> None:
        self.step += 1
        print(f"\n=== {self.step}. {title}", flush=True)

    def show(self, program: str, *args: str) -> list[str]:
        """Print the command as a person would type it; return the argv that runs it here (this
        interpreter, so the same installation runs whether or not the script is on PATH)."""
        print("$ " + shlex.join([*_program(program), *args]), flush=True)
        return [sys.executable, "-m", PROGRAMS[program], *args]

    def run(self, program: str, *args: str) -> None:
        subprocess.run(self.show(program, *args), check=True, env=self.env)


def _prepare(root: Path) -> str | None:
    """Make ``root`` ready for a fresh tour; the reason when it cannot be used."""
    if root.exists() and not root.is_dir():
        return f"{root} is a file"
    if root.is_dir() and any(root.iterdir()):
        if not (root / MARKER).is_file():
            return f"{root} exists and was not made by the demo; pick another --dir"
        from server.store import store_in_use  # lmdb: only when there is a previous demo

        in_use = store_in_use(root / "data")
        if in_use:  # a server started by hand on the demo's data: removing it would lose writes
            return f"cannot replace the previous demo: {in_use}"
        shutil.rmtree(root)
        print(f"(replacing the previous demo in {root})")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by `embed-server demo`; it may remove this directory\n")
    return None


def _port(requested: int) -> int:
    if requested:
        return requested
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", DEFAULT_PORT))
            return DEFAULT_PORT
        except OSError:
            return free_port()


def run(args: argparse.Namespace) -> int:
    root = args.dir.resolve()
    problem = _prepare(root)
    if problem:
        print(f"embed-server demo: {problem}", file=sys.stderr)
        return 2
    data_dir, home, log_path = root / "data", root / "edge", root / "server.log"
    port = _port(args.port)
    server_address = f"127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    tour = _Tour(env)
    edge = ("--home", str(home))
    search = ("search", "--collection", COLLECTION, *edge, "--k", "3")
    print(
        "A tour of embedstream. Each step prints the command it runs; paste them in the same order "
        "to do it yourself\n(the server in one terminal, the rest in another). Everything stays in "
        f"{root}:\ndata/ (the server's store), edge/ (the edge client's home), server.log."
    )
    tour.say(
        f"start the server. --edge-fit-min-vectors {FIT_MIN_VECTORS} (default 256) so that the 56 "
        "sample documents are enough to fit the edge projection; one worker without torch.compile "
        "starts fastest for a corpus this small"
    )
    argv = tour.show(
        "embed-server", "serve", "--port", str(port), "--data-dir", str(data_dir),
        "--edge-fit-min-vectors", str(FIT_MIN_VECTORS), "--workers", "1", "--compile", "off",
    )  # fmt: skip
    print(f"(its log goes to {log_path}; the first start also exports the model to ONNX for the edge)")
    started = time.monotonic()
    with log_path.open("wb") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        try:
            wait_serving(server_address, server, args.timeout)
        except Exception as exc:
            print(f"embed-server demo: the server did not start ({exc}); from {log_path}:", file=sys.stderr)
            print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
            return 1
        print(f"serving after {time.monotonic() - started:.0f} s", flush=True)
        ingest = ("ingest", str(SAMPLE), "--collection", COLLECTION, "--server", server_address)
        tour.say("ingest the sample corpus through the Ingest RPC: every document is embedded")
        tour.run("embed-server", *ingest)
        tour.say("ingest it again: every document is a content-hash hit, nothing is embedded twice")
        tour.run("embed-server", *ingest)
        tour.say(
            "edge: fetch, verify and install the bundle. The store now holds enough vectors, so the "
            "server first fits the edge projection on them (a PCA rotation; the adaptor needs "
            "--edge-adaptor-min-docs, 2,000)"
        )
        tour.run("edge-client", "init", "--server", server_address, *edge, "--no-progress")
        tour.say("edge: pull the collection's projected 128-dim vectors into the local index")
        tour.run("edge-client", "sync", "--collection", COLLECTION, *edge, "--no-progress")
        tour.say("search on the device (local index), then on the server (full 384 dims)")
        tour.run("edge-client", *search, "--mode", "local", LOCAL_QUERY)
        tour.run("edge-client", *search, "--mode", "server", LOCAL_QUERY)
        tour.say("auto mode decides by itself: a clear local match is answered on the device")
        tour.run("edge-client", *search, "--mode", "auto", CLEAR_QUERY)
        tour.say("auto mode: nothing local is close to this query, so it asks the server (and says why)")
        tour.run("edge-client", *search, "--mode", "auto", OFF_TOPIC_QUERY)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    tour.say("the server is stopped (SIGTERM). auto mode still answers, from the device, flagged degraded")
    tour.run("edge-client", *search, "--mode", "auto", "--comprehensive", "--timeout", "2", LOCAL_QUERY)
    print(
        f"\nDone. Everything is kept in {root} (server log: {log_path}).\n"
        "Start the server again with the command of step 1 and repeat any step; "
        f"remove it all with: rm -rf {shlex.quote(str(root))}"
    )
    return 0
