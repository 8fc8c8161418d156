"""Edge benchmark: SciFact nDCG@10 by edge dimensions (naive truncation vs PCA rotation), local /
server / auto answers, and edge query latency (embed + search) at 5k and 100k local vectors.

    python benchmarks/bench_edge.py [--cache DIR] [--server HOST:PORT --collection NAME]

Quality runs without RPCs: corpus vectors are the server's (sentence-transformers, float32;
cached in --cache), "server" is exact full-dimension cosine over them (what Search with exact
does), "local" is the edge path (int8 ONNX query encoder, bundle projection, f16 usearch index
of the projected corpus vectors, exactly what SyncVectors delivers), "auto" applies
edge_client._policy to each local answer and takes the server's when it says so. The rotation
is fitted on corpus vectors only (never queries or qrels). With --server, the server column
is also measured through the real Search RPC. The 100k latency rows pad the 5k real vectors
with random unit vectors (latency only, not quality).
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime  # noqa: F401  (must load before usearch)

from edge_client._index import LocalIndex  # isort: skip
from edge_client._policy import Policy, calibrate, weak_evidence
from edge_client._projection import Projection, fit_pca_rotation

SCIFACT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "scifact"
DIMS = (32, 64, 128, 256, 384)


def load_scifact() -> tuple[list[str], list[str], list[str], list[str], dict[str, dict[str, int]]]:
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt") as handle:
        docs = [json.loads(line) for line in handle]
    qrels: dict[str, dict[str, int]] = {}
    for line in (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, score = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(score)
    queries = [json.loads(line) for line in (SCIFACT / "queries.jsonl").open()]
    queries = [q for q in queries if q["_id"] in qrels]
    doc_texts = [f"{d.get('title') or ''} {d.get('text') or ''}".strip() for d in docs]
    return (
        [d["_id"] for d in docs],
        doc_texts,
        [q["_id"] for q in queries],
        [q["text"] for q in queries],
        qrels,
    )


def ndcg_at_10(ranked: list[list[str]], qids: list[str], qrels: dict[str, dict[str, int]]) -> float:
    scores = []
    for qid, docs in zip(qids, ranked, strict=True):
        rel = qrels[qid]
        dcg = sum(rel.get(d, 0) / np.log2(i + 2) for i, d in enumerate(docs[:10]))
        ideal = sorted(rel.values(), reverse=True)[:10]
        idcg = sum(r / np.log2(i + 2) for i, r in enumerate(ideal))
        scores.append(dcg / idcg if idcg else 0.0)
    return float(np.mean(scores))


def exact_ranking(queries: np.ndarray, corpus: np.ndarray, ids: list[str], k: int = 10) -> list[list[str]]:
    sims = queries @ corpus.T
    top = np.argsort(-sims, axis=1)[:, :k]
    return [[ids[j] for j in row] for row in top]


def torch_vectors(texts: list[str], cache: Path | None, name: str) -> np.ndarray:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=None, help="directory caching corpus vectors")
    parser.add_argument("--server", default=None, help="also measure Search on this server")
    parser.add_argument("--collection", default="scifact")
    parser.add_argument("--latency-queries", type=int, default=200)
    args = parser.parse_args()
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)

    from server.edge_bundle import build_bundle, ensure_onnx
    from server.model import load_spec
    from server.servicers.edge import onnx_cache_dir
    from server.settings import Settings

    ids, texts, qids, qtexts, qrels = load_scifact()
    corpus = torch_vectors(texts, args.cache, "scifact_corpus")
    query_full = torch_vectors(qtexts, args.cache, "scifact_queries")
    spec = load_spec()
    rotation = fit_pca_rotation(corpus)  # corpus vectors only
    work = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    bundle = build_bundle(
        spec,
        work / "bundle",
        rotation,
        default_dims=128,
        onnx_dir=ensure_onnx(spec, onnx_cache_dir(Settings())),
    )
    edge_full = bundle.encoder(int8=True).encode(qtexts)  # what the edge computes for queries
    print(f"SciFact test: {len(qids)} queries, {len(ids)} documents; rotation fitted on the corpus vectors\n")

    server_ranked = exact_ranking(query_full, corpus, ids)
    full = ndcg_at_10(server_ranked, qids, qrels)
    print("nDCG@10 (torch query vectors, exact search)")
    print(f"{'dims':>5} {'naive':>8} {'rotation':>9} {'rot/full':>9}")
    identity = Projection.identity(spec.dimensions)
    for dims in DIMS:
        row = []
        for projection in (identity, rotation):
            c, q = projection.apply(corpus, dims), projection.apply(query_full, dims)
            row.append(ndcg_at_10(exact_ranking(q, c, ids), qids, qrels))
        print(f"{dims:>5} {row[0]:>8.3f} {row[1]:>9.3f} {row[1] / full:>8.1%}")

    print("\nlocal (int8 ONNX query + f16 usearch, rotation) / server (full 384, exact) / auto")
    print(f"{'dims':>5} {'local':>7} {'server':>7} {'auto':>7} {'auto local share':>17} {'threshold':>10}")
    for dims in (64, 128, 256):
        index = LocalIndex(work / f"idx{dims}", dims=dims)
        index.upsert(ids, rotation.apply(corpus, dims), [""] * len(ids), [{}] * len(ids), source="sync")
        index.set_state("bundle_fingerprint", bundle.fingerprint)
        index.touch_sync()
        index.save()
        threshold = calibrate(index)
        local_ranked, auto_ranked, local_answers = [], [], 0
        for i, qv in enumerate(rotation.apply(edge_full, dims)):
            hits = index.search(qv, 10)
            local_ranked.append([h.id for h in hits])
            reason = weak_evidence(hits, index, bundle.fingerprint, Policy(), comprehensive=False)
            auto_ranked.append(local_ranked[-1] if reason is None else server_ranked[i])
            local_answers += reason is None
        local, auto = ndcg_at_10(local_ranked, qids, qrels), ndcg_at_10(auto_ranked, qids, qrels)
        share = local_answers / len(qids)
        print(f"{dims:>5} {local:>7.3f} {full:>7.3f} {auto:>7.3f} {share:>17.1%} {threshold:>10.3f}")
        index.close()

    if args.server:
        import grpc

        from protos.embedding.v1 import embedding_pb2 as pb
        from protos.embedding.v1.embedding_pb2_grpc import CollectionServiceStub

        with grpc.insecure_channel(args.server) as channel:
            stub = CollectionServiceStub(channel)
            ranked = []
            for text in qtexts:
                reply = stub.Search(
                    pb.SearchRequest(collection=args.collection, query=text, k=10), timeout=60
                )
                ranked.append([h.id for h in reply.hits])
        rpc_ndcg = ndcg_at_10(ranked, qids, qrels)
        print(f"\nserver Search RPC ({args.server}, {args.collection}): nDCG@10 {rpc_ndcg:.3f}")

    print(f"\nedge query latency, embed (int8 ONNX) + search (f16 usearch), {args.latency_queries} queries")
    print(f"{'vectors':>8} {'dims':>5} {'p50 ms':>8} {'p99 ms':>8} {'search-only p50':>16}")
    rng = np.random.default_rng(0)
    for n in (5_000, 100_000):
        dims = 128
        base = rotation.apply(corpus, dims)
        index = LocalIndex(work / f"lat{n}", dims=dims)
        index.upsert(ids, base, [""] * len(ids), [{}] * len(ids), source="sync")
        if n > len(ids):
            extra = rng.standard_normal((n - len(ids), dims)).astype(np.float32)
            extra /= np.linalg.norm(extra, axis=1, keepdims=True)
            for start in range(0, len(extra), 20_000):
                part = extra[start : start + 20_000]
                index.upsert([f"synthetic-{start + j}" for j in range(len(part))], part, [""] * len(part),
                             [{}] * len(part), source="sync")  # fmt: skip
        total, search_only = [], []
        for text in qtexts[: args.latency_queries]:
            t0 = time.perf_counter()
            qv = bundle.embed([text], dims)[0]
            t1 = time.perf_counter()
            index.search(qv, 10)
            t2 = time.perf_counter()
            total.append((t2 - t0) * 1e3)
            search_only.append((t2 - t1) * 1e3)
        p50, p99 = np.percentile(total, 50), np.percentile(total, 99)
        print(f"{len(index):>8} {dims:>5} {p50:>8.1f} {p99:>8.1f} {np.percentile(search_only, 50):>16.2f}")
        index.close()


if __name__ == "__main__":
    main()
