"""ANN recall of a collection whose documents get updated: usearch's patched graph vs our rebuild rule.

An update in usearch is remove + add. This measures recall@10 of the collection index (the
server's ``CollectionIndex`` over a real LMDB store) against exact search, on SciFact corpus
vectors of the real model, before and after every document has been updated ``--rounds`` times
(each update gives a document the vector of another corpus document), in calls of ``--batch``:
- fresh: the index built once from the store (the ceiling);
- patched: updates applied in place only (the rebuild rule switched off);
- ours: the same updates with the rebuild rule (``server.store.index``).
With ``--random-dim D`` the vectors and queries are seeded random unit vectors of D dimensions
instead (the synthetic case: usearch's recall on them is far below real embeddings', and the
patched graph loses more of it).

This script drives the store and index classes directly (random vectors cannot go through the
Ingest API, which embeds text, and the rebuild rule has no switch there), so it is the one
benchmark that follows the product's internals.

    python benchmarks/bench_index_updates.py [--limit 5183] [--rounds 1] [--batch 500]
        [--random-dim 64] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import RESULTS, SHARED_DATA, RunRecord, add_json_argument, corpus_texts


def _embed(texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    from server.model import load_spec

    spec = load_spec()
    model = SentenceTransformer(str(spec.path), device="cpu")  # float32: the reference vectors
    model.max_seq_length = spec.max_tokens
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float32)


def _recall(index, store, queries: np.ndarray, vectors: np.ndarray, ids: list[str]) -> float:  # type: ignore[no-untyped-def]
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    found = []
    for row, query in enumerate(queries):
        keys, _ = index.search(query, 10)
        got = set(store.ids_for_keys("c", [int(k) for k in keys]))
        found.append(len(got & {ids[j] for j in exact[row]}) / 10)
    return float(np.mean(found))


def run(
    vectors: np.ndarray, queries: np.ndarray, rounds: int, batch: int, rebuild: bool
) -> tuple[float, int]:
    import server.store.index as index_module
    from server.store import Indexes, Upsert, content_hash, open_store

    fp, n = "bench@1", len(vectors)
    saved = index_module.REBUILD_AFTER_REMOVED_FRACTION
    index_module.REBUILD_AFTER_REMOVED_FRACTION = saved if rebuild else float("inf")
    rng = np.random.default_rng(0)
    current = vectors.copy()
    ids = [f"d{i}" for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp))
        try:
            ups = [
                Upsert("c", ids[i], content_hash(fp, "", f"v0 {i}"), None, {}, v)
                for i, v in enumerate(current)
            ]
            store.upsert(ups, fingerprint=fp, dimension=vectors.shape[1])
            index = Indexes(
                store, Path(tmp) / "idx", fingerprint=fp, ndim=vectors.shape[1], metric="ip", dtype="f16"
            ).get("c")
            for r in range(1, rounds + 1):
                current = vectors[rng.permutation(n)]  # every document now has another document's vector
                for start in range(0, n, batch):
                    ups = [
                        Upsert("c", ids[i], content_hash(fp, "", f"v{r} {i}"), None, {}, current[i])
                        for i in range(start, min(n, start + batch))
                    ]
                    store.upsert(ups, fingerprint=fp, dimension=vectors.shape[1])
                    index.catch_up(store)
            return _recall(index, store, queries, current, ids), index.rebuilds
        finally:
            store.close()
            index_module.REBUILD_AFTER_REMOVED_FRACTION = saved


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", type=Path, default=SHARED_DATA / "scifact", help="BEIR folder")
    parser.add_argument("--limit", type=int, default=None, help="first N corpus documents (default all)")
    parser.add_argument("--rounds", type=int, default=1, help="times every document is updated")
    parser.add_argument("--batch", type=int, default=500, help="updates per store commit + index catch-up")
    parser.add_argument("--random-dim", type=int, default=0, help="random unit vectors of this many dims")
    parser.add_argument("--queries", type=int, default=300, help="random queries (with --random-dim)")
    add_json_argument(parser, "bench_index_updates")
    args = parser.parse_args()
    record = RunRecord("bench_index_updates")

    from server.evaluation.datasets import load_beir

    if args.random_dim:
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((args.limit or 5000, args.random_dim)).astype(np.float32)
        queries = rng.standard_normal((args.queries, args.random_dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        source = f"random unit vectors, {args.random_dim} dims (seed 0)"
    else:
        texts = corpus_texts(args.dataset, args.limit)
        queries_text = list(load_beir(args.dataset, "test").queries.values())
        print(
            f"embedding {len(texts)} documents and {len(queries_text)} queries (fp32, in process) ...",
            flush=True,
        )
        vectors, queries = _embed(texts), _embed(queries_text)
        source = f"{args.dataset.name} corpus and test queries, all-MiniLM-L6-v2 (fp32, in process)"
    print(f"{source}: {len(vectors)} documents, {len(queries)} queries")
    print(f"{'index':<36} {'recall@10':>9} {'rebuilds':>8}")
    fresh, _ = run(vectors, queries, 0, args.batch, rebuild=True)
    rows = [{"index": "fresh build (ceiling)", "recall@10": fresh, "rebuilds": 0}]
    print(f"{'fresh build (ceiling)':<36} {fresh:>9.3f} {0:>8}", flush=True)
    for name, rebuild in (("patched in place (no rebuild)", False), ("ours (rebuild at 25% removed)", True)):
        recall, rebuilds = run(vectors, queries, args.rounds, args.batch, rebuild)
        rows.append({"index": name, "recall@10": recall, "rebuilds": rebuilds})
        print(f"{name:<36} {recall:>9.3f} {rebuilds:>8}", flush=True)
    print(f"after {args.rounds} round(s) of updating all {len(vectors)} documents, {args.batch} per call")
    print(record.load_line())
    suffix = f"-random{args.random_dim}" if args.random_dim else ""
    record.write(
        args.json or RESULTS / f"bench_index_updates{suffix}.json",
        {
            "vectors": source,
            "documents": len(vectors),
            "queries": len(queries),
            "rounds": args.rounds,
            "batch": args.batch,
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
