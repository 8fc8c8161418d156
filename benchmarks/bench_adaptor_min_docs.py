"""Small corpora: the Matryoshka adaptor vs the PCA rotation fitted on the first N documents
(the evidence behind ``--edge-adaptor-min-docs``, default 2,000).

For each N in ``--sizes`` and each projection kind, the product's CLI fits the projection:
``embed-server export-edge --fit-corpus FIRST_N.jsonl --edge-projection adaptor|rotation
--edge-adaptor-min-docs 1 --edge-fit-min-vectors 1`` (the N documents ingested through the real
Ingest path into a temporary store; the adaptor also embeds sentences of their texts as
pseudo-queries). Then, with
SciFact test queries and in-process sentence-transformers fp32 vectors of the whole corpus
(cached in ``--cache``), at each of ``--dims``:
- ``ndcg@10``: exact search over the whole corpus (5,183 documents, so mostly documents the
  projection never saw), metrics from server.evaluation;
- ``held-out recall``: over the documents NOT among the N, the share of each query's full-
  dimension top-10 found in the projected top-20 (how well the projection keeps neighbours of
  documents it was not fitted on).

    python benchmarks/bench_adaptor_min_docs.py [--sizes 300,1000,2000,3000] [--cache DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
from _common import OFFLINE_ENV, REPO, SHARED_DATA, RunRecord, add_json_argument
from bench_edge import corpus_file, ndcg, torch_vectors

from embedcore import EdgeBundle, Projection
from server.evaluation import load_beir

SCIFACT = SHARED_DATA / "scifact"


def fit(kind: str, n: int, cache: Path, dataset: Path) -> tuple[Projection, dict[str, Any], float]:
    """The projection ``export-edge`` fits on the first ``n`` corpus documents (cached)."""
    out = cache / f"bundle-{dataset.name}-{kind}-{n}"
    seconds = 0.0
    if not (out / "manifest.json").is_file():
        with tempfile.TemporaryDirectory(prefix="bench-mindocs-") as tmp:
            corpus = Path(tmp) / "corpus.jsonl"
            with (
                open_text(corpus_file(dataset)) as src,
                corpus.open("w") as dst,
            ):
                for _, line in zip(range(n), src, strict=False):
                    dst.write(line)
            command = [
                sys.executable,
                "-m",
                "server",
                "export-edge",
                "--out",
                str(out),
                "--data-dir",
                str(Path(tmp) / "d"),
                "--fit-corpus",
                str(corpus),
                "--edge-projection",
                kind,
                "--edge-adaptor-min-docs",
                "1",
                "--edge-fit-min-vectors",
                "1",
                "--log-level",
                "WARNING",
            ]
            print(f"fitting {kind} on {n} documents ...", flush=True)
            t0 = time.perf_counter()
            subprocess.run(command, check=True, cwd=REPO, env={**os.environ, **OFFLINE_ENV})
            seconds = time.perf_counter() - t0
    bundle = EdgeBundle.load(out)
    if bundle.manifest.projection_kind != kind:
        raise RuntimeError(
            f"asked for {kind} on {n} docs, export-edge fitted {bundle.manifest.projection_kind}"
        )
    return bundle.projection, dict(bundle.manifest.extra), seconds


def open_text(path: Path) -> IO[str]:
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def held_out_recall(projection: Projection, dims: int, queries: np.ndarray, docs: np.ndarray) -> float:
    """Mean share of each query's full-dimension top-10 (over ``docs``) in its projected top-20."""
    full_top = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
    proj = projection.apply(queries, dims) @ projection.apply(docs, dims).T
    proj_top = np.argsort(-proj, axis=1)[:, :20]
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(full_top, proj_top, strict=True)]))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="300,1000,2000,3000", help="corpus prefixes to fit on")
    parser.add_argument("--dims", default="64,128", help="edge dimensions to score")
    parser.add_argument("--dataset", type=Path, default=SCIFACT, help="BEIR folder (default SciFact)")
    parser.add_argument("--cache", type=Path, default=None, help="directory caching vectors and bundles")
    add_json_argument(parser, "bench_adaptor_min_docs")
    args = parser.parse_args()
    record = RunRecord("bench_adaptor_min_docs")
    cache = args.cache or Path(tempfile.mkdtemp(prefix="bench-mindocs-cache-"))
    cache.mkdir(parents=True, exist_ok=True)
    data = load_beir(args.dataset, "test")
    ids, qids = list(data.corpus), list(data.queries)
    corpus = torch_vectors([data.corpus[i] for i in ids], cache, f"{args.dataset.name}_corpus")
    queries = torch_vectors([data.queries[q] for q in qids], cache, f"{args.dataset.name}_queries")
    dims_list = [int(d) for d in args.dims.split(",")]
    full = ndcg(qids, queries @ corpus.T, ids, data.qrels)
    print(f"{args.dataset.name}: {len(ids)} documents, {len(qids)} test queries; full nDCG@10 {full:.3f}")
    rows: list[dict[str, Any]] = []
    sizes = [int(s) for s in args.sizes.split(",")]
    for n in sizes:
        for kind in ("adaptor", "rotation"):
            projection, extra, seconds = fit(kind, n, cache, args.dataset)
            for dims in dims_list:
                rows.append(
                    {
                        "fit_docs": n,
                        "kind": kind,
                        "dims": dims,
                        "fit_s": seconds or "cached",
                        "manifest_extra": extra,
                        "ndcg@10": ndcg(
                            qids,
                            projection.apply(queries, dims) @ projection.apply(corpus, dims).T,
                            ids,
                            data.qrels,
                        ),
                        "held_out_recall_10_in_20": held_out_recall(projection, dims, queries, corpus[n:]),
                    }
                )
    print(
        f"\n{'fit docs':>8} {'dims':>5} {'nDCG@10 adaptor':>16} {'rotation':>9} "
        f"{'held-out recall adaptor':>24} {'rotation':>9}"
    )
    for n in sizes:
        for dims in dims_list:
            a, r = (
                next(x for x in rows if x["fit_docs"] == n and x["dims"] == dims and x["kind"] == k)
                for k in ("adaptor", "rotation")
            )
            print(
                f"{n:>8} {dims:>5} {a['ndcg@10']:>16.3f} {r['ndcg@10']:>9.3f} "
                f"{a['held_out_recall_10_in_20']:>24.3f} {r['held_out_recall_10_in_20']:>9.3f}"
            )
    print(record.load_line())
    record.write(
        args.json,
        {
            "dataset": args.dataset.name,
            "documents": len(ids),
            "queries": len(qids),
            "full_ndcg@10": full,
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
