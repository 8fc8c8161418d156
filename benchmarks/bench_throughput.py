"""Corpus embedding throughput over loopback: our server vs in-process sentence-transformers vs
Infinity, on the same texts at the same concurrency, plus compute efficiency and cached re-ingest.

Rows (docs/s; ratios against in-process fp32 encode and against Infinity):
- in-process ``SentenceTransformer.encode`` fp32 (and bf16) in this process, batch 32;
- our ``EmbedStream`` and ``Ingest`` for each backend (torch, onnx), a fresh server and store each,
  query cache off; ``Ingest`` again = cached re-ingest (nothing embedded);
- Infinity (``infinity-emb`` 0.0.78, torch engine, CPU) serving the same model directory over HTTP,
  in its own venv outside the repo (created on first use; skipped with the reason if it cannot be).
Model FLOP/s are useful FLOPs (unpadded tokens, see _common.model_flops) ÷ a square torch
matmul peak measured in the same run (fp32 sgemm and bf16 on CPU, fp16 on CUDA).

    python benchmarks/bench_throughput.py [--limit 1000] [--concurrency 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _common import (
    OFFLINE_ENV,
    SHARED_DATA,
    corpus_texts,
    embed_server,
    free_port,
    matmul_peak_gflops,
    model_config,
    model_flops,
    token_lengths,
)

INFINITY_PINS = ("torch==2.13.0", "infinity-emb[server,torch]==0.0.78")


@dataclass
class Row:
    name: str
    docs_per_s: float | None
    note: str = ""


def _split(texts: Sequence[str], parts: int) -> list[list[tuple[int, str]]]:
    indexed = list(enumerate(texts))
    return [indexed[i::parts] for i in range(parts)]


def _timed_parallel(
    texts: Sequence[str], concurrency: int, work: Callable[[list[tuple[int, str]]], int]
) -> float:
    """Run ``work`` on ``concurrency`` slices at once; docs/s over the wall time of all of them."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        done = sum(pool.map(work, _split(texts, concurrency)))
    seconds = time.perf_counter() - start
    if done != len(texts):
        raise RuntimeError(f"{done} of {len(texts)} items came back")
    return len(texts) / seconds


# --- in-process sentence-transformers ---------------------------------------------------------
def bench_in_process(texts: list[str], model_id: str, device: str, dtype: str, batch_size: int) -> float:
    import gc

    import torch
    from sentence_transformers import SentenceTransformer

    from server.model import load_spec

    spec = load_spec(model_id)
    kwargs: dict[str, Any] = {}
    if dtype != "float32":
        kwargs["model_kwargs"] = {"torch_dtype": getattr(torch, dtype)}
    model = SentenceTransformer(str(spec.path), device=device, **kwargs)
    model.max_seq_length = spec.max_tokens
    model.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    rate = len(texts) / (time.perf_counter() - start)
    del model
    gc.collect()
    return rate


# --- our server ---------------------------------------------------------------------------------
def bench_server(
    texts: list[str], backend: str, concurrency: int, extra: list[str]
) -> tuple[list[Row], dict[str, Any]]:
    import grpc

    from protos.embedding.v1 import embedding_pb2 as pb
    from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix=f"bench-{backend}-") as tmp:
        args = ["--backend", backend, "--query-cache-size", "0", "--log-level", "WARNING", *extra]
        with embed_server(Path(tmp) / "data", *args) as address:
            channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
            embedding = pb_grpc.EmbeddingServiceStub(channel)
            collections = pb_grpc.CollectionServiceStub(channel)
            info = embedding.Info(pb.InfoRequest(), timeout=60)
            tag = f"{backend}/{info.dtype or '?'}"
            embedding.Embed(pb.EmbedRequest(inputs=texts[:8]), timeout=300)  # warm-up

            def stream(part: list[tuple[int, str]]) -> int:
                options = pb.EmbedOptions(precision=pb.PRECISION_FLOAT32)
                requests = (
                    pb.EmbedStreamRequest(id=str(i), input=text, options=options if n == 0 else None)
                    for n, (i, text) in enumerate(part)
                )
                count = 0
                for reply in embedding.EmbedStream(requests):
                    if reply.HasField("error"):
                        raise RuntimeError(f"EmbedStream item {reply.id}: {reply.error.message}")
                    count += 1
                return count

            cached_counts: list[int] = []
            lock = threading.Lock()

            def ingest(part: list[tuple[int, str]]) -> int:
                requests = (pb.IngestRequest(collection="bench", id=f"d{i}", text=t) for i, t in part)
                count = cached = 0
                for ack in collections.Ingest(requests):
                    if ack.HasField("error") and ack.error.code:
                        raise RuntimeError(f"Ingest {ack.id}: {ack.error.message}")
                    count += 1
                    cached += ack.cached
                with lock:
                    cached_counts.append(cached)
                return count

            rows.append(Row(f"ours EmbedStream {tag}", _timed_parallel(texts, concurrency, stream)))
            first = _timed_parallel(texts, concurrency, ingest)
            first_cached = sum(cached_counts)
            cached_counts.clear()
            again = _timed_parallel(texts, concurrency, ingest)
            rows.append(Row(f"ours Ingest (first) {tag}", first, f"{first_cached} cached"))
            rows.append(Row(f"ours Ingest (re-ingest) {tag}", again, f"{sum(cached_counts)} cached"))
            channel.close()
            meta = {
                "backend": backend,
                "dtype": info.dtype,
                "workers": info.workers,
                "reingest_ratio": again / first,
            }
    return rows, meta


# --- Infinity -----------------------------------------------------------------------------------
def ensure_infinity(venv: Path) -> Path:
    """The venv's ``infinity_emb`` executable, creating the venv when missing."""
    exe = venv / "bin" / "infinity_emb"
    if exe.is_file():
        return exe
    print(f"creating the Infinity venv at {venv} (several minutes) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    for pin in INFINITY_PINS:  # torch first: the pin keeps pip from resolving a CUDA build
        subprocess.run([*pip, pin], check=True)
    if not exe.is_file():
        raise RuntimeError(f"{exe} missing after install")
    return exe


def bench_infinity(texts: list[str], model_id: str, venv: Path, concurrency: int, batch: int) -> float:
    from server.model import load_spec

    exe = ensure_infinity(venv)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(exe), "v2", "--model-id", str(load_spec(model_id).path), "--served-model-name", "bench",
        "--engine", "torch", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
        "--no-vector-disk-cache", "--batch-size", str(batch),
    ]  # fmt: skip
    log = Path(tempfile.gettempdir()) / f"infinity-{port}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE_ENV}
        )
    try:
        deadline = time.monotonic() + 600
        while True:  # Infinity has no readiness stream: poll its /health
            if process.poll() is not None:
                raise RuntimeError(f"infinity exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("infinity did not become healthy in 600 s")
            time.sleep(0.5)

        def post(inputs: list[str]) -> int:
            body = json.dumps({"model": "bench", "input": inputs}).encode()
            request = urllib.request.Request(f"{url}/embeddings", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=600) as reply:
                return len(json.loads(reply.read())["data"])

        post(texts[:8])  # warm-up

        def work(part: list[tuple[int, str]]) -> int:
            items = [t for _, t in part]
            return sum(post(items[s : s + batch]) for s in range(0, len(items), batch))

        return _timed_parallel(texts, concurrency, work)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- report -------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    width = spec.split(".")[0]
    return format("-", f">{width}") if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", type=Path, default=SHARED_DATA / "scifact", help="BEIR folder (corpus)")
    parser.add_argument("--limit", type=int, default=None, help="first N corpus documents only")
    parser.add_argument("--concurrency", type=int, default=4, help="client streams / HTTP clients at once")
    parser.add_argument("--batch-size", type=int, default=32, help="in-process and Infinity batch size")
    parser.add_argument("--backends", default="torch,onnx", help="our server backends to measure")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `serve` flag (repeatable)")
    parser.add_argument(
        "--infinity-venv",
        type=Path,
        default=Path.home() / ".cache" / "embedstream" / "infinity-venv",
        help="venv holding infinity-emb (created when missing; outside the repo)",
    )
    parser.add_argument("--no-infinity", action="store_true", help="skip the Infinity peer")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="model (alias or directory), all engines")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: in-process rows and matmul peaks")
    parser.add_argument("--no-half", action="store_true", help="skip the in-process half-precision row")
    parser.add_argument("--json", type=Path, default=None, help="write the table as JSON")
    args = parser.parse_args()

    from server.model import load_spec

    spec = load_spec(args.model)
    half = "bfloat16" if args.device == "cpu" else "float16"
    texts = corpus_texts(args.dataset, args.limit)
    lengths = token_lengths(spec.path, texts, spec.max_tokens)
    flops_per_doc = model_flops(model_config(spec.path), lengths) / len(texts)
    print(f"{len(texts)} docs from {args.dataset.name}, mean {sum(lengths) / len(lengths):.0f} tokens "
          f"(max {spec.max_tokens}), {flops_per_doc / 1e9:.2f} GFLOP/doc, concurrency {args.concurrency}, "
          f"{os.cpu_count()} CPUs", flush=True)  # fmt: skip
    load_start = os.getloadavg()[0]
    peaks = {d: matmul_peak_gflops(d, device=args.device) for d in ("float32", half)}
    print(
        f"matmul peak ({args.device}): fp32 {peaks['float32']:.0f}, {half} {peaks[half]:.0f} GFLOP/s",
        flush=True,
    )

    fp32 = bench_in_process(texts, args.model, args.device, "float32", args.batch_size)
    rows = [Row("in-process ST fp32", fp32)]
    print(f"  {rows[-1].name}: {fp32:.1f} docs/s", flush=True)
    if not args.no_half:
        rate = bench_in_process(texts, args.model, args.device, half, args.batch_size)
        rows.append(Row(f"in-process ST {half}", rate))
        print(f"  {rows[-1].name}: {rate:.1f} docs/s", flush=True)
    servers: list[dict[str, Any]] = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        try:
            server_rows, meta = bench_server(
                texts, backend, args.concurrency, ["--model", args.model, *args.server_arg]
            )
            rows += server_rows
            servers.append(meta)
            for row in server_rows:
                print(f"  {row.name}: {row.docs_per_s:.1f} docs/s {row.note}", flush=True)
        except Exception as exc:  # one backend failing must not hide the others' numbers
            rows.append(Row(f"ours {backend}", None, f"failed: {type(exc).__name__}: {exc}"[:200]))
            print(f"  ours {backend}: {rows[-1].note}", flush=True)
    infinity: float | None = None
    if args.no_infinity:
        rows.append(Row("Infinity 0.0.78 torch", None, "skipped (--no-infinity)"))
    else:
        try:
            infinity = bench_infinity(
                texts, args.model, args.infinity_venv, args.concurrency, args.batch_size
            )
            rows.append(Row("Infinity 0.0.78 torch", infinity))
        except Exception as exc:
            rows.append(Row("Infinity 0.0.78 torch", None, f"skipped: {type(exc).__name__}: {exc}"[:200]))
        print(f"  {rows[-1].name}: {_fmt(rows[-1].docs_per_s, '.1f')} docs/s {rows[-1].note}", flush=True)

    # The CPU is shared: measure the baseline again at the end and compare against the mean,
    # printing the drift so a reader can see how much the machine's load moved during the run.
    fp32_end = bench_in_process(texts, args.model, args.device, "float32", args.batch_size)
    st = (fp32 + fp32_end) / 2
    rows[0] = Row("in-process ST fp32", st, f"start {fp32:.1f}, end {fp32_end:.1f} docs/s (mean)")
    print(f"baseline drift: in-process fp32 {fp32:.1f} docs/s at the start, {fp32_end:.1f} at the end")
    print(f"load average (1 min) at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f}")
    print()
    header = f"{'engine':<40} {'docs/s':>8} {'xST fp32':>8} {'xInfinity':>9} {'GFLOP/s':>8}"
    header += f" {'%fp32pk':>7} {'%halfpk':>7}  note"
    print(header)
    print("-" * len(header))
    table = []
    for row in rows:
        rate = row.docs_per_s
        gflops = None if rate is None else rate * flops_per_doc / 1e9
        cached = "re-ingest" in row.name  # embeds nothing: FLOP/s would be meaningless
        entry = {
            **asdict(row),
            "x_st_fp32": None if rate is None or not st else rate / st,
            "x_infinity": None if rate is None or not infinity else rate / infinity,
            "model_gflops": None if cached else gflops,
            "pct_fp32_peak": None if cached or gflops is None else 100 * gflops / peaks["float32"],
            "pct_half_peak": None if cached or gflops is None else 100 * gflops / peaks[half],
        }
        table.append(entry)
        print(
            f"{row.name:<40} {_fmt(rate, '8.1f')} {_fmt(entry['x_st_fp32'], '8.2f')} "
            f"{_fmt(entry['x_infinity'], '9.2f')} {_fmt(entry['model_gflops'], '8.0f')} "
            f"{_fmt(entry['pct_fp32_peak'], '7.0f')} {_fmt(entry['pct_half_peak'], '7.0f')}  {row.note}"
        )
    for meta in servers:
        print(
            f"cached re-ingest vs first ingest ({meta['backend']}/{meta['dtype']}): "
            f"{meta['reingest_ratio']:.1f}x"
        )
    if args.json:
        report = {
            "docs": len(texts),
            "mean_tokens": sum(lengths) / len(lengths),
            "gflop_per_doc": flops_per_doc / 1e9,
            "concurrency": args.concurrency,
            "device": args.device,
            "half_dtype": half,
            "peaks_gflops": peaks,
            "rows": table,
            "servers": servers,
            "cpus": os.cpu_count(),
            "baseline_fp32_start_end": [fp32, fp32_end],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
