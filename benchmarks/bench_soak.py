"""Soak: mixed load on a real server for ``--minutes``, sampling the memory of every process.

Load, each in its own thread, all the time:
- Ingest streams of 200 small documents (upserts of a rolling id range),
- Ingest streams of 1 MB documents (distinct texts: each is embedded and stored),
- unary Search and Embed calls,
- EmbedStream streams of 100 texts,
- cancels: an Ingest stream of 1 MB documents and an EmbedStream cancelled mid-way.

The server's parent and each of its child processes (encoder workers) are sampled every
``--sample-s`` (RSS and anonymous RSS; LMDB's file pages count in RSS, not in anonymous). The
table gives per process start, peak and end RSS and the slope of anonymous RSS after warm-up
(least squares over the samples after the first ``--warmup-fraction`` of the run), then the
calls by operation and status, and the SIGTERM exit code and time. Raw samples and counts go to
``benchmarks/results/soak-<time>.json``.

    python benchmarks/bench_soak.py --minutes 20
    python benchmarks/bench_soak.py --minutes 3 --server-args "--workers 1 --compile off"
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shlex
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from _common import REPO, server_process

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as rpc

MIB = 1 << 20
RESULTS = REPO / "benchmarks" / "results"


# --- the load --------------------------------------------------------------------------------


class Counts:
    """Calls by (operation, status name); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by: collections.Counter[tuple[str, str]] = collections.Counter()

    def add(self, op: str, status: str) -> None:
        with self._lock:
            self.by[(op, status)] += 1


def _words(seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(4000)]


WORDS = _words(1)


def _sentence(rng: random.Random, n: int = 20) -> str:
    return " ".join(rng.choices(WORDS, k=n)) + "."


def _large_text(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=MIB // 6))[:MIB]


def _call(counts: Counts, op: str, fn: Callable[[], None]) -> None:
    try:
        fn()
        counts.add(op, "OK")
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        counts.add(op, code.name if code is not None else "UNKNOWN")


def _loop(stop: threading.Event, counts: Counts, op: str, fn: Callable[[], None], pause: float) -> None:
    while not stop.is_set():
        _call(counts, op, fn)
        stop.wait(pause)  # pacing: interactive calls go first in the encoder queue, so unpaced
        # they would starve the ingest streams (measured: 1 small ingest in 3 minutes)


def _load(address: str, stop: threading.Event, counts: Counts, pause: float) -> list[threading.Thread]:
    channel = grpc.insecure_channel(
        address,
        options=[("grpc.max_send_message_length", 64 * MIB), ("grpc.max_receive_message_length", 64 * MIB)],
    )
    collections_ = rpc.CollectionServiceStub(channel)
    embedding = rpc.EmbeddingServiceStub(channel)
    rng = random.Random(0)
    state = {"small": 0, "large": 0}

    def ingest_small() -> None:
        start = state["small"] % 5000  # a rolling range: later rounds are upserts
        state["small"] += 200
        requests = (
            pb.IngestRequest(collection="soak-small", id=f"s{start + i}", text=_sentence(rng))
            for i in range(200)
        )
        for _ in collections_.Ingest(requests, timeout=300):
            pass

    def ingest_large() -> None:
        base = state["large"]
        state["large"] += 5
        local = random.Random(base)
        requests = (
            pb.IngestRequest(collection="soak-large", id=f"l{(base + i) % 200}", text=_large_text(local))
            for i in range(5)
        )
        for _ in collections_.Ingest(requests, timeout=600):
            pass

    def search() -> None:
        collections_.Search(
            pb.SearchRequest(collection="soak-small", query=_sentence(rng, 8), k=10), timeout=60
        )

    def embed() -> None:
        embedding.Embed(pb.EmbedRequest(inputs=[_sentence(rng) for _ in range(16)]), timeout=60)

    def embed_stream() -> None:
        requests = (pb.EmbedStreamRequest(id=str(i), input=_sentence(rng)) for i in range(100))
        for _ in embedding.EmbedStream(requests, timeout=300):
            pass

    def cancels() -> None:
        local = random.Random(rng.random())
        large = (
            pb.IngestRequest(collection="soak-cancel", id=f"c{i}", text=_large_text(local)) for i in range(40)
        )
        call = collections_.Ingest(large, timeout=600)
        for n, _ in enumerate(call):
            if n == 1:
                call.cancel()
        items = (pb.EmbedStreamRequest(id=str(i), input=_sentence(rng)) for i in range(2000))
        stream = embedding.EmbedStream(items, timeout=300)
        for n, _ in enumerate(stream):
            if n == 50:
                stream.cancel()

    # The collections exist before the load starts: searches of a missing one fail at once and,
    # unthrottled, would be most of the calls.
    ingest_small()
    ingest_large()
    work: list[tuple[str, Callable[[], None], float]] = [
        ("ingest-small", ingest_small, 0.0),
        ("ingest-large", ingest_large, 0.0),
        ("search", search, pause),
        ("embed", embed, pause),
        ("embed-stream", embed_stream, pause),
        ("cancel", cancels, pause),
    ]
    threads = [
        threading.Thread(target=_loop, args=(stop, counts, op, fn, wait), name=op, daemon=True)
        for op, fn, wait in work
    ]
    for thread in threads:
        thread.start()
    return threads


# --- sampling --------------------------------------------------------------------------------


def _memory(process: psutil.Process) -> tuple[int, int]:
    """(RSS, anonymous RSS) in bytes."""
    with open(f"/proc/{process.pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    rss, anon = (int(fields.get(name, "0 kB").split()[0]) * 1024 for name in ("VmRSS", "RssAnon"))
    return rss, anon


def _sample(server: subprocess.Popen[bytes], stop: threading.Event, period: float, out: list[Any]) -> None:
    parent = psutil.Process(server.pid)
    started = time.monotonic()
    while not stop.is_set():
        row: dict[str, Any] = {"t": round(time.monotonic() - started, 2), "procs": {}}
        try:
            children = parent.children(recursive=True)
            for name, proc in [("parent", parent), *((f"child-{c.pid}", c) for c in children)]:
                if name != "parent" and "resource_tracker" in " ".join(proc.cmdline()):
                    continue
                rss, anon = _memory(proc)
                row["procs"][name] = [rss, anon]
        except (psutil.Error, OSError):
            pass
        out.append(row)
        stop.wait(period)  # the sampling period


def _series(samples: list[Any], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = [(s["t"], *s["procs"][name]) for s in samples if name in s["procs"]]
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    return arr[:, 0], arr[:, 1], arr[:, 2]


def summarize(samples: list[Any], warmup_fraction: float) -> list[dict[str, Any]]:
    names = sorted({n for s in samples for n in s["procs"]}, key=lambda n: (n != "parent", n))
    total = samples[-1]["t"] if samples else 0.0
    rows = []
    for name in names:
        t, rss, anon = _series(samples, name)
        if len(t) < 2:
            continue
        after = t >= warmup_fraction * total
        slope = (
            float(np.polyfit(t[after] / 60, anon[after] / MIB, 1)[0]) if after.sum() >= 3 else float("nan")
        )
        rows.append(
            {
                "process": name,
                "start_mib": rss[0] / MIB,
                "peak_mib": rss.max() / MIB,
                "end_mib": rss[-1] / MIB,
                "anon_start_mib": anon[0] / MIB,
                "anon_peak_mib": anon.max() / MIB,
                "anon_end_mib": anon[-1] / MIB,
                "anon_slope_mib_per_min": slope,
                "seconds": float(t[-1] - t[0]),
            }
        )
    return rows


def _table(rows: list[dict[str, Any]], counts: Counts, shutdown: dict[str, Any]) -> str:
    lines = [
        "| process | RSS start | RSS peak | RSS end | anon start | anon peak | anon end "
        "| anon slope after warm-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['process']} | {r['start_mib']:.0f} MiB | {r['peak_mib']:.0f} MiB | {r['end_mib']:.0f} MiB "
            f"| {r['anon_start_mib']:.0f} MiB | {r['anon_peak_mib']:.0f} MiB | {r['anon_end_mib']:.0f} MiB "
            f"| {r['anon_slope_mib_per_min']:+.2f} MiB/min |"
        )
    lines += ["", "| operation | status | calls |", "|---|---|---|"]
    for (op, status), n in sorted(counts.by.items()):
        lines.append(f"| {op} | {status} | {n} |")
    lines += ["", f"SIGTERM: exit code {shutdown['exit_code']} after {shutdown['seconds']:.1f} s"]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--sample-s", type=float, default=2.0)
    parser.add_argument(
        "--pause-s", type=float, default=0.5, help="pause between interactive calls of one thread"
    )
    parser.add_argument(
        "--warmup-fraction", type=float, default=0.25, help="share of the run before the slope"
    )
    parser.add_argument("--server-args", default="--workers 2 --compile off", help="extra `serve` flags")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temporary directory")
    options = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        data_dir = options.data_dir or Path(tmp) / "data"
        server_args = shlex.split(options.server_args)
        with server_process(data_dir, *server_args) as server:
            process, address, log_path = server.process, server.address, server.log
            assert process is not None
            stop, done = threading.Event(), threading.Event()
            counts, samples = Counts(), list[Any]()
            sampler = threading.Thread(target=_sample, args=(process, done, options.sample_s, samples))
            sampler.start()
            threads = _load(address, stop, counts, options.pause_s)
            stop.wait(options.minutes * 60)  # the run's length
            stop.set()
            for thread in threads:
                thread.join(timeout=600)
            done.set()
            sampler.join()
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                code: int | None = process.wait(120)
            except subprocess.TimeoutExpired:
                code = None
            shutdown = {"exit_code": code, "seconds": time.monotonic() - started}
            rows = summarize(samples, options.warmup_fraction)
            table = _table(rows, counts, shutdown)
            print(table)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = RESULTS / f"soak-{stamp}.json"
            out.write_text(
                json.dumps(
                    {
                        "minutes": options.minutes,
                        "server_args": server_args,
                        "summary": rows,
                        "calls": [
                            {"op": op, "status": st, "n": n} for (op, st), n in sorted(counts.by.items())
                        ],
                        "shutdown": shutdown,
                        "samples": samples,
                        "server_log_tail": log_path.read_text(errors="replace")[-4000:],
                    },
                    indent=1,
                )
            )
            print(f"\nraw samples: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
