"""Helpers the benchmark scripts share: data, a real server subprocess, matmul peaks, FLOPs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server.launch import free_port, serve_command, wait_serving

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",  # Infinity telemetry off (no network here anyway)
    "INFINITY_ANONYMOUS_USAGE_STATS": "0",
}

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def corpus_texts(dataset: Path, limit: int | None) -> list[str]:
    from server.evaluation.datasets import load_beir

    texts = list(load_beir(dataset, "test").corpus.values())
    return texts[:limit] if limit else texts


@contextmanager
def embed_server(data_dir: Path, *args: str, timeout: float = 600) -> Iterator[str]:
    """``embed-server serve`` on a free port; yields HOST:PORT once health says SERVING."""
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
        yield address
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
