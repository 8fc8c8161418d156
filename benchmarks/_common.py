"""Helpers the benchmark scripts share: data, a real server subprocess, matmul peaks, FLOPs,
per-round statistics, process CPU times, and the raw-results file every script writes.

Every script writes its raw numbers as JSON (default ``benchmarks/results/<script>.json``, see
:func:`write_results`) with the date, the commit, the machine (CPU model, cores, RAM, the CPU
flags that decide bf16/int8 speed) and the load average before and after the run, so a README
figure can name the file and the conditions it comes from.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # this checkout's packages, not another one's editable install
    sys.path.insert(0, str(REPO))

from server.launch import free_port, serve_command, wait_serving  # noqa: E402


def _shared_data() -> Path:
    """``shared/data`` beside the checkout (a git worktree may sit one level deeper)."""
    for parent in REPO.parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    return REPO.parent / "shared" / "data"


SHARED_DATA = _shared_data()
RESULTS = REPO / "benchmarks" / "results"
# CPU flags that decide which dtype is fast: AMX / AVX512-BF16 run bf16 natively (elsewhere torch
# emulates it, slower than fp32); VNNI speeds up int8 (ONNX Runtime's quantized graph).
SPEED_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",  # Infinity telemetry off (no network here anyway)
    "INFINITY_ANONYMOUS_USAGE_STATS": "0",
}


def corpus_texts(dataset: Path, limit: int | None) -> list[str]:
    from server.evaluation.datasets import load_beir

    texts = list(load_beir(dataset, "test").corpus.values())
    return texts[:limit] if limit else texts


@dataclass(frozen=True)
class ServerProcess:
    """A running ``embed-server serve``: its address and its process (for CPU times)."""

    address: str
    pid: int
    log: Path
    process: subprocess.Popen[bytes] | None = None  # to signal it and read its exit code


@contextmanager
def embed_server(data_dir: Path, *args: str, timeout: float = 600) -> Iterator[str]:
    """``embed-server serve`` on a free port; yields HOST:PORT once health says SERVING."""
    with server_process(data_dir, *args, timeout=timeout) as server:
        yield server.address


@contextmanager
def server_process(data_dir: Path, *args: str, timeout: float = 600) -> Iterator[ServerProcess]:
    """``embed-server serve`` (the CLI, via server.launch) on a free port, stopped with SIGTERM at
    the end; yields once health says SERVING. Its log is ``data_dir/../server-PORT.log``.

    With ``--no-chunking`` unless ``args`` say ``--chunking``: the peers cut every input at the
    model's maximum, so a document is one vector for every engine measured (like work), and the
    quality rows stay comparable with the earlier truncation figures; chunking is measured by
    benchmarks/bench_long_docs.py (per request)."""
    if "--chunking" not in args and "--no-chunking" not in args:
        args = ("--no-chunking", *args)
    port = free_port()
    address = f"127.0.0.1:{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            serve_command(port, data_dir, *args),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **OFFLINE_ENV},
            cwd=REPO,
        )
    try:
        try:
            wait_serving(address, process, timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{log_path.read_text()[-3000:]}") from exc
        yield ServerProcess(address, process.pid, log_path, process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def matmul_peak_gflops(dtype: str, *, device: str = "cpu", seconds: float = 3.0) -> float:
    """Best observed GFLOP/s of a square torch matmul (CPU: 2048², every thread torch uses;
    CUDA: 8192², fp32 without TF32)."""
    import torch

    size, reps = (2048, 1) if device == "cpu" else (8192, 10)
    seconds = seconds if device != "cpu" else max(seconds, 6.0)  # best-of needs samples on a busy CPU
    torch.backends.cuda.matmul.allow_tf32 = False
    kind = getattr(torch, dtype)
    a = torch.randn(size, size, device=device).to(kind)
    b = torch.randn(size, size, device=device).to(kind)

    def run() -> float:
        start = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / reps

    run()  # warm-up (kernel selection, AMX tile setup)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        best = min(best, run())
    return 2 * size**3 / best / 1e9


def model_config(model_dir: Path) -> dict[str, Any]:
    return dict(json.loads((model_dir / "config.json").read_text()))


def token_lengths(model_dir: Path, texts: list[str], max_tokens: int) -> list[int]:
    """Tokens per text after truncation to the model maximum, special tokens included."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    return [len(e.ids) for e in tokenizer.encode_batch(texts)]


def model_flops(config: dict[str, Any], lengths: list[int]) -> float:
    """Useful forward FLOPs of a BERT encoder over unpadded sequences (2 per multiply-add):
    per layer and token 2*(4h^2 + 2*h*i) for the projections and MLP, plus 4*t*h per token for
    attention scores and the weighted sum. Embedding lookups and layer norms are ignored."""
    h = int(config["hidden_size"])
    i = int(config["intermediate_size"])
    layers = int(config["num_hidden_layers"])
    per_token = 2 * (4 * h * h + 2 * h * i)
    return float(sum(layers * (t * per_token + 4 * t * t * h) for t in lengths))


# --- per-round statistics ---------------------------------------------------------------------
def spread(values: Sequence[float]) -> dict[str, float] | None:
    """min / median / max of per-round values (None when there are none)."""
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def fmt_spread(values: dict[str, float] | None, spec: str = ".2f") -> str:
    """``min / median / max`` for a table cell, ``-`` when not measured."""
    if values is None:
        return "-"
    return " / ".join(format(values[k], spec) for k in ("min", "median", "max"))


# --- process CPU times (/proc) ------------------------------------------------------------------
def _cpu_seconds(pid: int) -> float:
    """utime + stime of one process (its threads included), seconds; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


def process_cpu(pid: int) -> dict[str, Any]:
    """CPU seconds of a server process and of each of its child processes (the encoder workers,
    plus helpers such as multiprocessing's resource tracker, which stay near zero)."""
    return {"parent": _cpu_seconds(pid), "children": {c: _cpu_seconds(c) for c in _children(pid)}}


def cpu_delta(before: dict[str, Any], after: dict[str, Any]) -> tuple[float, list[float]]:
    """(parent CPU-s, per-child CPU-s) spent between two :func:`process_cpu` snapshots; a child
    that appeared in between (a restarted worker) counts from zero."""
    children = [after["children"][c] - before["children"].get(c, 0.0) for c in after["children"]]
    return after["parent"] - before["parent"], sorted(children, reverse=True)


# --- the raw-results file -------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """CPU model, cores, RAM and the dtype-relevant CPU flags of this machine."""
    model, flags = "", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    versions: dict[str, str | None] = {}
    for package in ("torch", "onnxruntime", "sentence-transformers", "usearch", "grpcio"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_model": model or platform.processor() or "?",
        "logical_cpus": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": ram_gib,
        "cpu_flags": sorted(flags & set(SPEED_FLAGS)),
        "native_bf16": bool(flags & {"amx_bf16", "avx512_bf16"}),
        "hostname": platform.node(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
    }


def git_state() -> dict[str, Any]:
    """The commit benchmarked and whether the tree had uncommitted changes."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


class RunRecord:
    """Start of a benchmark run: date and load average now; :meth:`write` adds the end."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.started = datetime.datetime.now(datetime.UTC)
        self.load_before = os.getloadavg()
        self.monotonic = time.monotonic()

    def write(self, path: Path | None, payload: dict[str, Any]) -> Path:
        """Write ``payload`` with the run's provenance to ``path`` (default
        ``benchmarks/results/<script>.json``); returns the path."""
        path = path or RESULTS / f"{self.script}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "script": f"benchmarks/{self.script}.py",
            "argv": sys.argv[1:],
            "date": self.started.isoformat(timespec="seconds"),
            "wall_s": round(time.monotonic() - self.monotonic, 1),
            **git_state(),
            "machine": machine(),
            "load_avg_before": [round(x, 2) for x in self.load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
            **payload,
        }
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"raw results: {path}", flush=True)
        return path

    def load_line(self) -> str:
        """One line for the printed report: load average (1/5/15 min) before and now."""
        now = os.getloadavg()
        return (
            f"load average 1/5/15 min: before {'/'.join(f'{x:.1f}' for x in self.load_before)}, "
            f"after {'/'.join(f'{x:.1f}' for x in now)} ({os.cpu_count()} CPUs)"
        )


def add_json_argument(parser: argparse.ArgumentParser, script: str) -> None:
    """``--json FILE``: where the raw results go (default benchmarks/results/<script>.json)."""
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help=f"raw results file (default {RESULTS.relative_to(REPO)}/{script}.json)",
    )
