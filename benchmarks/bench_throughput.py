"""Corpus embedding throughput over loopback: our server vs in-process sentence-transformers vs
Infinity, on the same texts at the same concurrency, plus compute efficiency and cached re-ingest.

Engines (docs/s; ratios against in-process fp32 encode and against Infinity):
- in-process ``SentenceTransformer.encode`` fp32 (and bf16) in this process, batch 32;
- our ``EmbedStream`` and ``Ingest`` for each backend (torch, onnx), a server and store each,
  query cache off; ``Ingest`` again = cached re-ingest (nothing embedded);
- Infinity (``infinity-emb`` 0.0.78, torch engine, CPU) serving the same model directory over HTTP,
  in its own venv outside the repo (created on first use; skipped with the reason if it cannot be).
All engines are started first and stay up; then each round takes the next ``--limit`` corpus
documents and measures every engine on them, in a rotated order. A row's docs/s is the median
over rounds and its ratios are medians of per-round ratios, so drift in a shared machine's speed
during the run cancels instead of favouring whoever ran in a quiet moment.
Model FLOP/s are useful FLOPs (unpadded tokens, see _common.model_flops) ÷ a square torch
matmul peak measured in the same run (fp32 sgemm and bf16 on CPU, fp16 on CUDA).

    python benchmarks/bench_throughput.py [--limit 400] [--rounds 3] [--concurrency 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import (
    OFFLINE_ENV,
    SHARED_DATA,
    corpus_texts,
    embed_server,
    matmul_peak_gflops,
    model_config,
    model_flops,
    token_lengths,
)

from server.launch import free_port

INFINITY_PINS = ("torch==2.13.0", "infinity-emb[server,torch]==0.0.78")


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


# --- engines: each started once, then measured once per round --------------------------------
class Engine:
    """Something that embeds texts; ``measure`` returns (row name, docs/s, note) per step."""

    def measure(self, texts: list[str], concurrency: int) -> list[tuple[str, float, str]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class InProcess(Engine):
    """``SentenceTransformer.encode`` in this process (batch ``batch_size``, normalized)."""

    def __init__(self, model_id: str, device: str, dtype: str, batch_size: int, name: str) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        from server.model import load_spec

        spec = load_spec(model_id)
        kwargs: dict[str, Any] = {}
        if dtype != "float32":
            kwargs["model_kwargs"] = {"torch_dtype": getattr(torch, dtype)}
        self.model = SentenceTransformer(str(spec.path), device=device, **kwargs)
        self.model.max_seq_length = spec.max_tokens
        self.batch_size, self.name = batch_size, name
        self.model.encode(["warm-up"] * batch_size, batch_size=batch_size)

    def measure(self, texts: list[str], concurrency: int) -> list[tuple[str, float, str]]:
        start = time.perf_counter()
        self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        return [(self.name, len(texts) / (time.perf_counter() - start), "")]


class OurServer(Engine):
    """Our server (one backend, its own store, query cache off): EmbedStream, Ingest, re-Ingest.
    Each round ingests its own slice into its own collection, so the first Ingest embeds everything
    and the second is all cache hits."""

    def __init__(self, backend: str, extra: list[str], stack: contextlib.ExitStack) -> None:
        import grpc

        from protos.embedding.v1 import embedding_pb2 as pb
        from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc

        self.pb = pb
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-{backend}-"))
        args = ["--backend", backend, "--query-cache-size", "0", "--log-level", "WARNING", *extra]
        address = stack.enter_context(embed_server(Path(tmp) / "data", *args))
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.embedding = pb_grpc.EmbeddingServiceStub(self.channel)
        self.collections = pb_grpc.CollectionServiceStub(self.channel)
        info = self.embedding.Info(pb.InfoRequest(), timeout=60)
        self.backend, self.dtype, self.workers = backend, info.dtype or "?", info.workers
        self.tag = f"{backend}/{self.dtype}"
        self.embedding.Embed(pb.EmbedRequest(inputs=["warm-up"] * 8), timeout=300)
        self.round = 0
        self.reingest_ratios: list[float] = []

    def _stream(self, part: list[tuple[int, str]]) -> int:
        pb = self.pb
        options = pb.EmbedOptions(precision=pb.PRECISION_FLOAT32)
        requests = (
            pb.EmbedStreamRequest(id=str(i), input=text, options=options if n == 0 else None)
            for n, (i, text) in enumerate(part)
        )
        count = 0
        for reply in self.embedding.EmbedStream(requests):
            if reply.HasField("error"):
                raise RuntimeError(f"EmbedStream item {reply.id}: {reply.error.message}")
            count += 1
        return count

    def _ingest(self, collection: str, cached: list[int]) -> Callable[[list[tuple[int, str]]], int]:
        def work(part: list[tuple[int, str]]) -> int:
            requests = (self.pb.IngestRequest(collection=collection, id=f"d{i}", text=t) for i, t in part)
            count = hits = 0
            for ack in self.collections.Ingest(requests):
                if ack.HasField("error") and ack.error.code:
                    raise RuntimeError(f"Ingest {ack.id}: {ack.error.message}")
                count += 1
                hits += ack.cached
            cached.append(hits)
            return count

        return work

    def measure(self, texts: list[str], concurrency: int) -> list[tuple[str, float, str]]:
        self.round += 1
        stream = _timed_parallel(texts, concurrency, self._stream)
        first_cached: list[int] = []
        first = _timed_parallel(texts, concurrency, self._ingest(f"round{self.round}", first_cached))
        again_cached: list[int] = []
        again = _timed_parallel(texts, concurrency, self._ingest(f"round{self.round}", again_cached))
        self.reingest_ratios.append(again / first)
        return [
            (f"ours EmbedStream {self.tag}", stream, ""),
            (f"ours Ingest (first) {self.tag}", first, f"{sum(first_cached)} cached"),
            (f"ours Ingest (re-ingest) {self.tag}", again, f"{sum(again_cached)} cached"),
        ]

    def close(self) -> None:
        self.channel.close()


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


class Infinity(Engine):
    """Infinity serving the same model directory over HTTP, posting ``batch`` texts per request."""

    name = "Infinity 0.0.78 torch"

    def __init__(self, model_id: str, venv: Path, batch: int) -> None:
        from server.model import load_spec

        exe = ensure_infinity(venv)
        port = free_port()
        self.url, self.batch = f"http://127.0.0.1:{port}", batch
        command = [
            str(exe), "v2", "--model-id", str(load_spec(model_id).path), "--served-model-name", "bench",
            "--engine", "torch", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
            "--no-vector-disk-cache", "--batch-size", str(batch),
        ]  # fmt: skip
        log = Path(tempfile.gettempdir()) / f"infinity-{port}.log"
        with log.open("wb") as handle:
            self.process = subprocess.Popen(
                command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE_ENV}
            )
        try:
            deadline = time.monotonic() + 600
            while True:  # Infinity has no readiness stream: poll its /health
                if self.process.poll() is not None:
                    raise RuntimeError(f"infinity exited: {log.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{self.url}/health", timeout=5) as reply:
                        if reply.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("infinity did not become healthy in 600 s")
                time.sleep(0.5)
            self._post(["warm-up"] * 8)
        except BaseException:
            self.close()
            raise

    def _post(self, inputs: list[str]) -> int:
        body = json.dumps({"model": "bench", "input": inputs}).encode()
        request = urllib.request.Request(f"{self.url}/embeddings", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as reply:
            return len(json.loads(reply.read())["data"])

    def measure(self, texts: list[str], concurrency: int) -> list[tuple[str, float, str]]:
        def work(part: list[tuple[int, str]]) -> int:
            items = [t for _, t in part]
            return sum(self._post(items[s : s + self.batch]) for s in range(0, len(items), self.batch))

        return [(self.name, _timed_parallel(texts, concurrency, work), "")]

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- report -------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    width = spec.split(".")[0]
    return format("-", f">{width}") if value is None else format(value, spec)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", type=Path, default=SHARED_DATA / "scifact", help="BEIR folder (corpus)")
    parser.add_argument("--limit", type=int, default=400, help="corpus documents per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each on the next --limit documents")
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
    texts = corpus_texts(args.dataset, args.limit * args.rounds)
    if len(texts) < args.limit * args.rounds:
        parser.error(f"{args.dataset} has {len(texts)} documents, fewer than --limit x --rounds")
    slices = [texts[r * args.limit : (r + 1) * args.limit] for r in range(args.rounds)]
    config = model_config(spec.path)
    lengths = [token_lengths(spec.path, s, spec.max_tokens) for s in slices]
    gflop_per_doc = [model_flops(config, ls) / len(ls) / 1e9 for ls in lengths]
    all_lengths = [n for ls in lengths for n in ls]
    print(f"{args.rounds} rounds x {args.limit} docs from {args.dataset.name}, mean "
          f"{sum(all_lengths) / len(all_lengths):.0f} tokens (max {spec.max_tokens}), "
          f"{sum(gflop_per_doc) / len(gflop_per_doc):.2f} GFLOP/doc, concurrency {args.concurrency}, "
          f"{os.cpu_count()} CPUs", flush=True)  # fmt: skip
    load_start = os.getloadavg()[0]
    peaks = {d: matmul_peak_gflops(d, device=args.device) for d in ("float32", half)}
    print(
        f"matmul peak ({args.device}): fp32 {peaks['float32']:.0f}, {half} {peaks[half]:.0f} GFLOP/s",
        flush=True,
    )

    st_name = "in-process ST fp32"
    rates: dict[str, list[float]] = {}  # row name -> docs/s per round
    notes: dict[str, str] = {}
    servers: list[OurServer] = []
    with contextlib.ExitStack() as stack:
        engines: list[Engine] = [InProcess(args.model, args.device, "float32", args.batch_size, st_name)]
        if not args.no_half:
            engines.append(InProcess(args.model, args.device, half, args.batch_size, f"in-process ST {half}"))
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            try:  # one backend failing must not hide the others' numbers
                servers.append(OurServer(backend, ["--model", args.model, *args.server_arg], stack))
                engines.append(servers[-1])
            except Exception as exc:
                notes[f"ours {backend}"] = f"failed: {type(exc).__name__}: {exc}"[:200]
                rates[f"ours {backend}"] = []
        if args.no_infinity:
            rates[Infinity.name], notes[Infinity.name] = [], "skipped (--no-infinity)"
        else:
            try:
                engines.append(Infinity(args.model, args.infinity_venv, args.batch_size))
                stack.callback(engines[-1].close)
            except Exception as exc:
                rates[Infinity.name] = []
                notes[Infinity.name] = f"skipped: {type(exc).__name__}: {exc}"[:200]
        # Interleaved rounds: the machine's speed drifts (a shared host), so every engine is
        # measured once per round on the same slice, in a rotated order, and ratios are taken
        # within a round before the median.
        for r, part in enumerate(slices):
            for engine in engines[r % len(engines) :] + engines[: r % len(engines)]:
                for name, rate, note in engine.measure(part, args.concurrency):
                    rates.setdefault(name, []).append(rate)
                    notes[name] = note
                    print(f"  round {r + 1} {name}: {rate:.1f} docs/s {note}", flush=True)
        for server in servers:
            server.close()

    st = rates[st_name]
    inf = rates.get(Infinity.name) or []

    def ratios(name: str, base: list[float]) -> float | None:
        mine = rates.get(name) or []
        if len(mine) != len(slices) or len(base) != len(slices):
            return None
        return _median([m / b for m, b in zip(mine, base, strict=True)])

    print(f"load average (1 min) at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f}")
    print()
    header = f"{'engine':<40} {'docs/s':>8} {'xST fp32':>8} {'xInfinity':>9} {'GFLOP/s':>8}"
    header += f" {'%fp32pk':>7} {'%halfpk':>7}  per round (docs/s); note"
    print(header)
    print("-" * len(header))
    table = []
    for name, values in rates.items():
        median_rate = _median(values)
        cached = "re-ingest" in name  # embeds nothing: FLOP/s would be meaningless
        per_round = [v * g for v, g in zip(values, gflop_per_doc, strict=True)]
        gflops = None if cached or not values else _median(per_round)
        pct_fp32 = None if gflops is None else 100 * gflops / peaks["float32"]
        pct_half = None if gflops is None else 100 * gflops / peaks[half]
        x_st, x_inf = ratios(name, st), ratios(name, inf)
        entry = {
            "name": name,
            "docs_per_s": median_rate,
            "per_round": values,
            "note": notes.get(name, ""),
            "x_st_fp32": x_st,
            "x_infinity": x_inf,
            "model_gflops": gflops,
            "pct_fp32_peak": pct_fp32,
            "pct_half_peak": pct_half,
        }
        table.append(entry)
        rounds = "/".join(f"{v:.0f}" for v in values)
        print(
            f"{name:<40} {_fmt(median_rate, '8.1f')} {_fmt(x_st, '8.2f')} "
            f"{_fmt(x_inf, '9.2f')} {_fmt(gflops, '8.0f')} "
            f"{_fmt(pct_fp32, '7.0f')} {_fmt(pct_half, '7.0f')}  "
            f"{rounds}; {entry['note']}"
        )
    print("ratios are medians of per-round ratios (each engine measured on the same slice in a round)")
    for server in servers:
        print(
            f"cached re-ingest vs first ingest ({server.tag}): "
            f"{_median(server.reingest_ratios) or 0:.1f}x (median of rounds)"
        )
    if args.json:
        report = {
            "docs_per_round": args.limit,
            "rounds": args.rounds,
            "mean_tokens": sum(all_lengths) / len(all_lengths),
            "gflop_per_doc": gflop_per_doc,
            "concurrency": args.concurrency,
            "device": args.device,
            "half_dtype": half,
            "peaks_gflops": peaks,
            "rows": table,
            "servers": [
                {
                    "backend": s.backend,
                    "dtype": s.dtype,
                    "workers": s.workers,
                    "reingest_ratio": _median(s.reingest_ratios),
                }
                for s in servers
            ],
            "cpus": os.cpu_count(),
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
