"""Edge benchmark: SciFact nDCG@10 by edge dimensions (naive truncation vs PCA rotation vs the
linear Matryoshka adaptor), STS-B transfer of the SciFact-fitted projections, local / server /
auto answers, edge query latency (embed + search) at 5k and 100k local vectors for three query
encoders, index bytes per document, and install sizes and times.

    python benchmarks/bench_edge.py [--cache DIR] [--server HOST:PORT --collection NAME]
        [--only-latency | --only-quality] [--measure-install edge,server] [--json FILE]

Bundles come from the product's CLI: ``embed-server export-edge`` with ``--fit-corpus`` (the
SciFact corpus ingested through the real Ingest path into a temporary store) and
``--edge-projection rotation`` / ``adaptor`` (the adaptor also embeds sentences of the corpus
texts as pseudo-queries; never queries or qrels), and without a corpus for the identity (naive
truncation). They are cached in ``--cache``.

Quality tables (simulated, no RPC): corpus and query vectors from in-process
sentence-transformers fp32 (cached in ``--cache``), exact search in numpy, metrics from
server.evaluation (pytrec_eval definitions). In the local / server / auto table, "local" is the
edge path (int8 ONNX query encoder, bundle projection, f16 usearch index of the projected corpus
vectors, what SyncVectors delivers), while "server (sim.)" is exact full-dimension cosine in
numpy and "auto (sim.)" applies edge_client.policy to each local answer and takes the simulated
server answer when it says so. With ``--server HOST:PORT --collection NAME`` (the SciFact corpus
ingested there, e.g. ``embed-server ingest``) the same columns are also measured for real: an
``EdgeClient`` per dimension inits from that server, syncs the collection and searches with
``mode="local"``, ``"server"`` (the Search RPC) and ``"auto"``.

Latency (benchmarks/_edge_latency.py): each encoder in its own process with its own index copy,
one query at a time, the order rotated per query; the 100k rows pad the real vectors with
random unit vectors (latency only, not quality). Index bytes: saved usearch files per edge
dtype (the server's index bytes are bench_ingest.py's). Install sizes: ``--measure-install``
creates fresh venvs and times ``pip install '.[edge]'`` / ``'.[server]'`` (pip's cache as it is;
``--install-no-cache`` to bypass it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import OFFLINE_ENV, REPO, SHARED_DATA, RunRecord, add_json_argument

import onnxruntime  # noqa: F401  isort: skip  (must load before usearch)
from edge_client import EdgeClient  # isort: skip
from edge_client.index import DTYPES, LocalIndex
from edge_client.policy import Policy, fit_threshold, weak_evidence
from embedcore import EdgeBundle, Projection
from server.evaluation import evaluate_run, load_beir, load_sts, spearman

SCIFACT = SHARED_DATA / "scifact"
STSB = SHARED_DATA / "stsb" / "sts-test.csv"
DIMS = (32, 64, 128, 256, 384)
Run = dict[str, dict[str, float]]


def ndcg(qids: list[str], scores: np.ndarray, ids: list[str], qrels: dict[str, dict[str, int]]) -> float:
    """nDCG@10 (server.evaluation) of exact search with a (queries x docs) score matrix."""
    top = np.argsort(-scores, axis=1)[:, :100]
    run = {q: {ids[j]: float(scores[r, j]) for j in top[r]} for r, q in enumerate(qids)}
    return evaluate_run(run, qrels)["ndcg@10"]


def hits_ndcg(
    qids: list[str], hits: list[list[tuple[str, float]]], qrels: dict[str, dict[str, int]]
) -> float:
    return evaluate_run({q: dict(h) for q, h in zip(qids, hits, strict=True)}, qrels)["ndcg@10"]


def torch_vectors(texts: list[str], cache: Path | None, name: str) -> np.ndarray:
    """In-process sentence-transformers fp32 vectors (the server's model), cached as .npy."""
    path = cache / f"{name}.npy" if cache else None
    if path and path.exists():
        return np.asarray(np.load(path), dtype=np.float32)
    from sentence_transformers import SentenceTransformer

    from server.model import load_spec

    spec = load_spec()
    model = SentenceTransformer(str(spec.path), device="cpu")
    model.max_seq_length = spec.max_tokens
    order = np.argsort([len(t) for t in texts])
    enc = model.encode([texts[i] for i in order], batch_size=32, convert_to_numpy=True)
    out = np.empty_like(enc)
    out[order] = enc
    if path:
        np.save(path, out)
    return np.asarray(out, dtype=np.float32)


def corpus_file(dataset: Path) -> Path:
    return next(p for p in (dataset / "corpus.jsonl.gz", dataset / "corpus.jsonl") if p.is_file())


def export_bundle(kind: str, cache: Path, dataset: Path, extra: list[str]) -> tuple[EdgeBundle, float]:
    """The edge bundle ``embed-server export-edge`` writes: ``naive`` (no corpus: identity),
    ``rotation`` or ``adaptor`` (fitted on the SciFact corpus). Cached; seconds the export took."""
    out = cache / ("bundle-naive" if kind == "naive" else f"bundle-{dataset.name}-{kind}")
    seconds = 0.0
    if not (out / "manifest.json").is_file():
        command = [sys.executable, "-m", "server", "export-edge", "--out", str(out), "--log-level", "WARNING"]
        with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
            command += ["--data-dir", tmp, *extra]
            if kind != "naive":
                command += ["--fit-corpus", str(corpus_file(dataset)), "--edge-projection", kind]
            print(f"exporting the {kind} bundle: {' '.join(command[1:])}", flush=True)
            t0 = time.perf_counter()
            subprocess.run(command, check=True, cwd=REPO, env={**os.environ, **OFFLINE_ENV})
            seconds = time.perf_counter() - t0
    bundle = EdgeBundle.load(out)
    if kind != "naive" and bundle.manifest.projection_kind != kind:
        raise RuntimeError(
            f"asked export-edge for {kind}, it fitted {bundle.manifest.projection_kind} (see its log)"
        )
    return bundle, seconds


def local_index(path: Path, ids: list[str], vectors: np.ndarray, dims: int, bundle: EdgeBundle) -> LocalIndex:
    index = LocalIndex(path, dims=dims)
    index.upsert(ids, vectors, [""] * len(ids), [{}] * len(ids), source="sync")
    index.set_state("bundle_fingerprint", bundle.fingerprint)
    index.touch_sync()
    index.save()
    return index


def quality(args: argparse.Namespace, bundles: dict[str, EdgeBundle], work: Path) -> dict[str, Any]:
    """nDCG@10 by projection and dims, STS-B transfer, and the local / server / auto table."""
    data = load_beir(args.dataset, "test")
    ids, qids = list(data.corpus), list(data.queries)
    corpus = torch_vectors([data.corpus[i] for i in ids], args.cache, f"{args.dataset.name}_corpus")
    query_full = torch_vectors([data.queries[q] for q in qids], args.cache, f"{args.dataset.name}_queries")
    projections = {
        "naive": Projection.identity(corpus.shape[1]),
        **{k: bundles[k].projection for k in ("rotation", "adaptor")},
    }
    full = ndcg(qids, query_full @ corpus.T, ids, data.qrels)
    out: dict[str, Any] = {"full_ndcg@10": full, "ndcg@10": {}, "sts": {}, "local_server_auto": []}
    print(
        f"{args.dataset.name} test: {len(qids)} queries, {len(ids)} documents; "
        f"full {corpus.shape[1]} dims nDCG@10 {full:.3f}"
    )
    print("nDCG@10 (torch query vectors, exact search):")
    print(f"{'dims':>5} {'naive':>8} {'rotation':>9} {'adaptor':>8} {'rot/full':>9} {'adapt/full':>11}")
    for dims in DIMS:
        row = {}
        for name, p in projections.items():
            if dims <= p.max_dims:
                row[name] = ndcg(qids, p.apply(query_full, dims) @ p.apply(corpus, dims).T, ids, data.qrels)
        out["ndcg@10"][dims] = row
        cells = [f"{row[n]:.3f}" if n in row else "-" for n in projections]
        ratios = [f"{row[n] / full:.1%}" if n in row else "-" for n in ("rotation", "adaptor")]
        print(f"{dims:>5} {cells[0]:>8} {cells[1]:>9} {cells[2]:>8} {ratios[0]:>9} {ratios[1]:>11}")

    sts = load_sts(STSB)
    va, vb = (
        torch_vectors(sts.left, args.cache, "stsb_test_a"),
        torch_vectors(sts.right, args.cache, "stsb_test_b"),
    )
    gold = np.asarray(sts.gold)
    for name, p in projections.items():
        for dims in (64, 128, p.max_dims):
            if dims <= p.max_dims:
                out["sts"].setdefault(name, {})[dims] = spearman(
                    (p.apply(va, dims) * p.apply(vb, dims)).sum(1), gold
                )
    print(
        f"\nSTS-B test transfer ({len(gold)} pairs, cosine Spearman; projections fitted on SciFact): "
        + "; ".join(
            f"{n}: " + ", ".join(f"{d} dims {v:.3f}" for d, v in s.items()) for n, s in out["sts"].items()
        )
    )

    edge_full = bundles["naive"].encoder(int8=True).encode([data.queries[q] for q in qids])
    server_scores = query_full @ corpus.T
    server_top = np.argsort(-server_scores, axis=1)[:, :10]
    server_hits = [[(ids[j], float(server_scores[r, j])) for j in server_top[r]] for r in range(len(qids))]
    print("\nlocal (int8 ONNX query + f16 usearch) vs SIMULATED server (exact full-dim cosine in numpy) and")
    print("SIMULATED auto (edge_client.policy on each local answer, the simulated server's when it says so)")
    print(
        f"{'projection':>10} {'dims':>5} {'local':>7} {'server(sim.)':>13} {'auto(sim.)':>11} "
        f"{'answered locally':>17} {'threshold':>10}"
    )
    for name in ("rotation", "adaptor"):
        p, bundle = projections[name], bundles[name]
        for dims in (32, 64, 128, 256):
            index = local_index(work / f"idx-{name}-{dims}", ids, p.apply(corpus, dims), dims, bundle)
            threshold = fit_threshold(index)
            local_hits, auto_hits, answered = [], [], 0
            for i, qv in enumerate(p.apply(edge_full, dims)):
                hits = index.search(qv, 10)
                local_hits.append([(h.id, h.score) for h in hits])
                reason = weak_evidence(hits, index, bundle.fingerprint, Policy(), comprehensive=False)
                auto_hits.append(local_hits[-1] if reason is None else server_hits[i])
                answered += reason is None
            index.close()
            entry: dict[str, Any] = {
                "projection": name,
                "dims": dims,
                "local": hits_ndcg(qids, local_hits, data.qrels),
                "server_simulated": full,
                "auto_simulated": hits_ndcg(qids, auto_hits, data.qrels),
                "answered_locally": answered / len(qids),
                "threshold": threshold,
            }
            out["local_server_auto"].append(entry)
            print(
                f"{name:>10} {dims:>5} {entry['local']:>7.3f} {full:>13.3f} {entry['auto_simulated']:>11.3f} "
                f"{entry['answered_locally']:>17.1%} {threshold:>10.3f}"
            )
    if args.server:
        out["real"] = real_path(args, data, work)
    return out


def real_path(args: argparse.Namespace, data: Any, work: Path) -> list[dict[str, Any]]:
    """local / server / auto measured for real: EdgeClient (public API) against a running server
    whose ``--collection`` holds the SciFact corpus; the projection is the server's bundle."""
    qids = list(data.queries)
    rows = []
    print(f"\nreal path: EdgeClient against {args.server}, collection {args.collection}")
    print(
        f"{'dims':>5} {'local':>7} {'server':>7} {'auto':>7} {'answered locally':>17} {'degraded':>9}  bundle"
    )
    server_hits: list[list[tuple[str, float]]] | None = None
    for dims in (32, 64, 128, 256):
        with EdgeClient(work / f"client-{dims}", server=args.server, dims=dims, timeout=60) as client:
            try:
                bundle = client.init()
            except Exception as exc:  # e.g. dims above what the server's projection produces
                print(f"{dims:>5} not measured: {exc}")
                continue
            client.sync(args.collection)
            if server_hits is None:
                server_hits = [
                    [
                        (h.id, h.score)
                        for h in client.search(
                            data.queries[q], collection=args.collection, mode="server"
                        ).results
                    ]
                    for q in qids
                ]
            local, auto, answered, degraded = [], [], 0, 0
            for q in qids:
                local.append(
                    [
                        (h.id, h.score)
                        for h in client.search(
                            data.queries[q], collection=args.collection, mode="local"
                        ).results
                    ]
                )
                result = client.search(data.queries[q], collection=args.collection, mode="auto")
                auto.append([(h.id, h.score) for h in result.results])
                answered += result.source == "local" and not result.degraded
                degraded += result.degraded
            row = {
                "dims": dims,
                "projection": bundle.manifest.projection_kind,
                "bundle": bundle.fingerprint,
                "local": hits_ndcg(qids, local, data.qrels),
                "server": hits_ndcg(qids, server_hits, data.qrels),
                "auto": hits_ndcg(qids, auto, data.qrels),
                "answered_locally": answered / len(qids),
                "degraded": degraded,
            }
            rows.append(row)
            print(
                f"{dims:>5} {row['local']:>7.3f} {row['server']:>7.3f} {row['auto']:>7.3f} "
                f"{row['answered_locally']:>17.1%} {degraded:>9}  {row['projection']}"
            )
    return rows


def latency(args: argparse.Namespace, bundle_dir: Path, work: Path) -> list[dict[str, Any]]:
    """Embed + search per encoder, isolated processes, at the real corpus size and 100k."""
    from _edge_latency import ENCODERS, measure

    from server.model import load_spec

    data = load_beir(args.dataset, "test")
    ids = list(data.corpus)
    bundle = EdgeBundle.load(bundle_dir)
    dims = 128
    base = bundle.projection.apply(
        torch_vectors([data.corpus[i] for i in ids], args.cache, f"{args.dataset.name}_corpus"), dims
    )
    queries = list(data.queries.values())[: args.latency_queries]
    rng = np.random.default_rng(0)
    out = []
    print(
        f"\nedge query latency, embed + search ({dims}-dim f16 usearch, k=10, "
        f"{bundle.manifest.projection_kind} "
        f"projection), {len(queries)} queries, one encoder process each, one query at a time"
    )
    print(
        f"{'vectors':>8} {'encoder':<35} {'p50 ms':>7} {'p99 ms':>7} {'embed p50':>10} {'search p50':>11} "
        f"{'p50 vs torch':>13}"
    )
    for n in (len(ids), 100_000):
        vectors = base
        if n > len(ids):
            extra = rng.standard_normal((n - len(ids), dims)).astype(np.float32)
            vectors = np.concatenate([base, extra / np.linalg.norm(extra, axis=1, keepdims=True)])
        result = measure(bundle_dir, load_spec().path, vectors, queries, dims, work / "latency")
        out.append(result)
        for kind in ENCODERS:
            r = result["encoders"][kind]
            print(
                f"{result['vectors']:>8} {kind:<35} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
                f"{r['embed_p50_ms']:>10.1f} {r['search_p50_ms']:>11.2f} {r['p50_vs_torch']:>12.2f}x"
            )
        print(
            f"{'':>8} (1-min load average {result['load_1min_before']:.1f} before, "
            f"{result['load_1min_after']:.1f} after)"
        )
    return out


def index_bytes(bundle: EdgeBundle, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Saved usearch bytes per document for each edge dtype at 128 dims."""
    data = load_beir(args.dataset, "test")
    ids = list(data.corpus)
    dims = 128
    vectors = bundle.projection.apply(
        torch_vectors([data.corpus[i] for i in ids], args.cache, f"{args.dataset.name}_corpus"), dims
    )
    print(
        f"\nindex bytes per document: saved usearch files of {len(ids)} SciFact documents (ids and texts live"
    )
    print("in sqlite, not counted); 'raw' = the vector payload alone, the rest is the HNSW graph")
    out = []
    for dtype in DTYPES:
        index = LocalIndex(work / f"bytes-{dtype}", dims=dims, dtype=dtype)
        index.upsert(ids, vectors, [""] * len(ids), [{}] * len(ids), source="sync")
        index.save()
        index.close()
        files = sorted((work / f"bytes-{dtype}").glob("vectors.*.usearch"))
        size = sum(f.stat().st_size for f in files)
        raw = {"f16": 2 * dims, "i8": dims, "b1": dims // 8 + 2 * dims}[dtype]
        out.append(
            {
                "dtype": dtype,
                "dims": dims,
                "files": [f.name for f in files],
                "bytes": size,
                "bytes_per_doc": size / len(ids),
                "raw_bytes_per_doc": raw,
            }
        )
        print(
            f"edge {dtype:<4} {' + '.join(f.name for f in files):<42} "
            f"{size / len(ids):>8.0f} bytes/doc, raw {raw}"
        )
    return out


def measure_install(extras: list[str], no_cache: bool) -> list[dict[str, Any]]:
    """Fresh venv per extra; seconds of ``pip install 'REPO[extra]'`` and du of the venv."""
    out = []
    for extra in extras:
        with tempfile.TemporaryDirectory(prefix=f"bench-venv-{extra}-") as tmp:
            venv = Path(tmp) / "venv"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            command = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{REPO}[{extra}]"]
            command += ["--no-cache-dir"] if no_cache else []
            t0 = time.perf_counter()
            subprocess.run(command, check=True)
            seconds = time.perf_counter() - t0
            kib = int(
                subprocess.run(
                    ["du", "-sk", str(venv)], capture_output=True, text=True, check=True
                ).stdout.split()[0]
            )
        row = {
            "extra": extra,
            "install_s": seconds,
            "venv_mib": kib / 1024,
            "pip_cache": "off" if no_cache else "as is",
        }
        out.append(row)
        print(
            f"pip install '.[{extra}]' into a fresh venv: {seconds:.0f} s, {kib / 1024:,.0f} MiB "
            f"(pip cache {row['pip_cache']})"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", type=Path, default=SCIFACT, help="BEIR folder (default SciFact)")
    parser.add_argument("--cache", type=Path, default=None, help="directory caching vectors and bundles")
    parser.add_argument("--server", default=None, help="also measure the real path against this server")
    parser.add_argument("--collection", default="scifact", help="the collection holding SciFact on --server")
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument(
        "--export-arg", action="append", default=[], help="extra `export-edge` flag (repeatable)"
    )
    parser.add_argument("--only-latency", action="store_true", help="latency and index bytes only")
    parser.add_argument("--only-quality", action="store_true", help="the nDCG and STS tables only")
    parser.add_argument(
        "--measure-install", default="", help="extras to install into fresh venvs: edge,server"
    )
    parser.add_argument(
        "--install-no-cache", action="store_true", help="pip --no-cache-dir for --measure-install"
    )
    add_json_argument(parser, "bench_edge")
    args = parser.parse_args()
    record = RunRecord("bench_edge")
    args.cache = args.cache or Path(tempfile.mkdtemp(prefix="bench-edge-cache-"))
    args.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    results: dict[str, Any] = {}
    kinds = ("naive",) if args.only_latency else ("naive", "rotation", "adaptor")
    bundles, seconds = {}, {}
    for kind in kinds:
        bundles[kind], seconds[kind] = export_bundle(kind, args.cache, args.dataset, args.export_arg)
    results["bundles"] = {
        k: {
            "fingerprint": b.fingerprint,
            "projection": b.manifest.projection_kind,
            "extra": b.manifest.extra,
            "export_s": seconds[k] or "cached",
        }
        for k, b in bundles.items()
    }
    if not args.only_latency:
        results["quality"] = quality(args, bundles, work)
    if not args.only_quality:
        results["latency"] = latency(args, args.cache / "bundle-naive", work)
        results["index_bytes"] = index_bytes(bundles["naive"], args, work)
    if args.measure_install:
        results["install"] = measure_install(
            [e for e in args.measure_install.split(",") if e], args.install_no_cache
        )
    print(record.load_line())
    record.write(args.json, results)


if __name__ == "__main__":
    main()
