"""Edge query latency with each query encoder in its own process (bench_edge.py --only-latency).

One process per encoder (int8 ONNX, fp32 ONNX, torch fp32 via sentence-transformers), each with
its own copy of the local index (edge_client.index.LocalIndex, f16, the projected vectors). The
coordinator sends one query at a time to one process and waits for its timings, rotating which
encoder goes first for each query: exactly one encoder computes at any moment, and no process
holds two libraries' thread pools (the ONNX processes never import torch), so the ratio measures
the encoders, not their contention. Each process uses every usable core (ORT's default, torch
set_num_threads).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

ENCODERS = ("int8 ONNX (edge default)", "fp32 ONNX", "torch fp32 (sentence-transformers)")


def _serve(kind: str, bundle_dir: str, model_dir: str, index_dir: str, dims: int, conn: Connection) -> None:
    """Child process: build the encoder, open its copy of the index, then answer (embed ms,
    search ms) per query."""
    import onnxruntime  # noqa: F401  (before usearch, which the index imports)

    from edge_client.index import LocalIndex
    from embedcore import EdgeBundle

    bundle = EdgeBundle.load(Path(bundle_dir))
    prefix = bundle.prompt(bundle.manifest.query_prompt_name)
    if kind.startswith("torch"):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(len(os.sched_getaffinity(0)))
        model = SentenceTransformer(model_dir, device="cpu")  # float32, as loaded
        model.max_seq_length = bundle.manifest.max_tokens

        def embed(text: str) -> np.ndarray:
            full = np.asarray(model.encode([prefix + text], convert_to_numpy=True), dtype=np.float32)
            vector: np.ndarray = bundle.projection.apply(full, dims)[0]
            return vector
    else:
        int8 = kind.startswith("int8")

        def embed(text: str) -> np.ndarray:
            vector: np.ndarray = bundle.embed([text], dims, int8=int8)[0]
            return vector

    index = LocalIndex(Path(index_dir), dims=dims)  # a copy of the one the coordinator built
    for text in ("warm-up", "a second warm-up query", "third"):  # session / graph warm-up
        index.search(embed(text), 10)
    conn.send(("ready", len(index)))
    while (text := conn.recv()) is not None:
        t0 = time.perf_counter()
        vector = embed(text)
        t1 = time.perf_counter()
        index.search(vector, 10)
        t2 = time.perf_counter()
        conn.send(((t1 - t0) * 1e3, (t2 - t1) * 1e3))
    index.close()


def measure(
    bundle_dir: Path, model_dir: Path, vectors: np.ndarray, queries: list[str], dims: int, work: Path
) -> dict[str, Any]:
    """p50/p99 of embed + search per encoder over ``queries``, each encoder in its own process,
    against an index of ``vectors`` (already projected to ``dims``)."""
    from edge_client.index import LocalIndex

    ctx = mp.get_context("spawn")
    built = work / f"index-{len(vectors)}"
    index = LocalIndex(built, dims=dims)
    ids = [str(i) for i in range(len(vectors))]
    for start in range(0, len(ids), 20_000):
        part = slice(start, start + 20_000)
        n = len(ids[part])
        index.upsert(ids[part], vectors[part], [""] * n, [{}] * n, source="sync")
    index.save()
    index.close()
    children: dict[str, tuple[Any, Connection]] = {}
    try:
        for n, kind in enumerate(ENCODERS):
            parent, child = ctx.Pipe()
            copy = work / f"index-{len(vectors)}-{n}"
            shutil.copytree(built, copy)
            args = (
                kind,
                str(bundle_dir),
                str(model_dir),
                str(copy),
                dims,
                child,
            )
            process = ctx.Process(target=_serve, args=args, daemon=True)
            process.start()
            children[kind] = (process, parent)
        size = 0
        for _, conn in children.values():
            _, size = conn.recv()
        load_before = os.getloadavg()[0]
        embed: dict[str, list[float]] = {k: [] for k in ENCODERS}
        search: dict[str, list[float]] = {k: [] for k in ENCODERS}
        for q, text in enumerate(queries):
            for kind in ENCODERS[q % len(ENCODERS) :] + ENCODERS[: q % len(ENCODERS)]:
                conn = children[kind][1]
                conn.send(text)
                e, s = conn.recv()
                embed[kind].append(e)
                search[kind].append(s)
        load_after = os.getloadavg()[0]
    finally:
        for process, conn in children.values():
            with contextlib.suppress(OSError):
                conn.send(None)
            process.join(60)
            if process.is_alive():
                process.kill()
    rows = {}
    for kind in ENCODERS:
        total = np.add(embed[kind], search[kind])
        rows[kind] = {
            "p50_ms": float(np.percentile(total, 50)),
            "p99_ms": float(np.percentile(total, 99)),
            "embed_p50_ms": float(np.percentile(embed[kind], 50)),
            "search_p50_ms": float(np.percentile(search[kind], 50)),
        }
    torch_p50 = rows[ENCODERS[-1]]["p50_ms"]
    for row in rows.values():
        row["p50_vs_torch"] = row["p50_ms"] / torch_p50
    return {
        "vectors": size,
        "queries": len(queries),
        "load_1min_before": load_before,
        "load_1min_after": load_after,
        "encoders": rows,
    }
