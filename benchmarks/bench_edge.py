"""Edge benchmark: SciFact nDCG@10 by edge dimensions (naive truncation vs PCA rotation vs the
linear Matryoshka adaptor), STS-B transfer of the SciFact-fitted projections, local / server /
auto answers, edge query latency (embed + search) at 5k and 100k local vectors for three
query encoders, index bytes per document, and install sizes.

    python benchmarks/bench_edge.py [--cache DIR] [--server HOST:PORT --collection NAME]
        [--only-latency | --only-quality] [--edge-venv PATH --server-venv PATH]

Quality runs without RPCs: corpus vectors are the server's (sentence-transformers, float32;
cached in --cache), "server" is exact full-dimension cosine over them (what Search with exact
does), "local" is the edge path (int8 ONNX query encoder, bundle projection, f16 usearch index
of the projected corpus vectors, exactly what SyncVectors delivers), "auto" applies
edge_client.policy to each local answer and takes the server's when it says so. The rotation
and the adaptor are fitted on corpus vectors only (the adaptor also on pseudo-queries: sentences
of the corpus texts, server.edge_adaptor.pseudo_query_sentences; never queries or qrels). The
transfer line scores STS-B test (cosine Spearman) through the SciFact-fitted projections.
With --server, the server column is also measured through the real Search RPC. The 100k
latency rows pad the 5k real vectors with random unit vectors (latency only, not quality).

Latency compares, in the same run and interleaved query by query (so load drift hits all alike),
the edge's int8 ONNX encoder (the default), its fp32 ONNX encoder, and in-process
sentence-transformers (torch, float32) on the same model, one query per call, each followed by
the same rotated 128-dim f16 usearch search. Index bytes are the saved usearch files of the 5k
SciFact vectors per edge dtype (b1 counts its f16 rescoring file too) and the server's
full-dimension index. --only-latency skips the nDCG sections.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime  # noqa: F401  (must load before usearch)

from edge_client.index import DTYPES, LocalIndex  # isort: skip
from edge_client.policy import Policy, fit_threshold, weak_evidence
from embedcore import EdgeBundle, Projection, fit_pca_rotation

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SCIFACT = SHARED / "scifact"
STSB = SHARED / "stsb" / "sts-test.csv"
DIMS = (32, 64, 128, 256, 384)


def torch_threads() -> int:
    from server.hardware import usable_cores

    return usable_cores()


def load_stsb() -> tuple[list[str], list[str], np.ndarray]:
    rows = [line.rstrip("\n").split("\t") for line in STSB.open(encoding="utf-8")]
    rows = [r for r in rows if len(r) >= 7]
    return [r[5] for r in rows], [r[6] for r in rows], np.array([float(r[4]) for r in rows])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def cell(projection: Projection, dims: int, score: Callable[[Projection, int], float]) -> str:
    return f"{score(projection, dims):.3f}" if dims <= projection.max_dims else "-"


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


def quality(
    args: argparse.Namespace,
    bundle: EdgeBundle,
    rotation: Projection,
    adaptor: Projection,
    data: tuple[list[str], list[str], list[str], list[str], dict[str, dict[str, int]]],
    corpus: np.ndarray,
    query_full: np.ndarray,
    work: Path,
) -> None:
    """nDCG@10 tables: naive vs rotation vs adaptor, STS-B transfer, local / server / auto, and
    optionally the Search RPC."""
    ids, _texts, qids, qtexts, qrels = data
    edge_full = bundle.encoder(int8=True).encode(qtexts)  # what the edge computes for queries
    server_ranked = exact_ranking(query_full, corpus, ids)
    full = ndcg_at_10(server_ranked, qids, qrels)
    print("nDCG@10 (torch query vectors, exact search)")
    print(f"{'dims':>5} {'naive':>8} {'rotation':>9} {'adaptor':>8} {'rot/full':>9} {'adapt/full':>11}")
    identity = Projection.identity(bundle.manifest.dimension)

    def ndcg(projection: Projection, dims: int) -> float:
        c, q = projection.apply(corpus, dims), projection.apply(query_full, dims)
        return ndcg_at_10(exact_ranking(q, c, ids), qids, qrels)

    for dims in DIMS:
        row = [cell(p, dims, ndcg) for p in (identity, rotation, adaptor)]
        ratios = [f"{float(v) / full:.1%}" if v != "-" else "-" for v in row[1:]]
        print(f"{dims:>5} {row[0]:>8} {row[1]:>9} {row[2]:>8} {ratios[0]:>9} {ratios[1]:>11}")

    sa, sb, gold = load_stsb()
    va, vb = torch_vectors(sa, args.cache, "stsb_test_a"), torch_vectors(sb, args.cache, "stsb_test_b")

    def sts(projection: Projection, dims: int) -> float:
        return spearman((projection.apply(va, dims) * projection.apply(vb, dims)).sum(axis=1), gold)

    full_sts = sts(identity, identity.max_dims)
    print(f"\nSTS-B test transfer ({len(gold)} pairs, cosine Spearman; projections fitted on SciFact):")
    print(f"full {identity.max_dims}: {full_sts:.3f}; " + "; ".join(
        f"{dims}: naive {cell(identity, dims, sts)} / rotation {cell(rotation, dims, sts)} / "
        f"adaptor {cell(adaptor, dims, sts)}" for dims in (64, 128)
    ))  # fmt: skip

    print("\nlocal (int8 ONNX query + f16 usearch) / server (full 384, exact) / auto, per projection")
    print(
        f"{'projection':>10} {'dims':>5} {'local':>7} {'server':>7} {'auto':>7} {'auto local share':>17} "
        f"{'threshold':>10}"
    )
    for name, projection in (("rotation", rotation), ("adaptor", adaptor)):
        for dims in (32, 64, 128, 256):
            index = LocalIndex(work / f"idx-{name}-{dims}", dims=dims)
            index.upsert(ids, projection.apply(corpus, dims), [""] * len(ids), [{}] * len(ids), source="sync")
            index.set_state("bundle_fingerprint", bundle.fingerprint)
            index.touch_sync()
            index.save()
            threshold = fit_threshold(index)
            local_ranked, auto_ranked, local_answers = [], [], 0
            for i, qv in enumerate(projection.apply(edge_full, dims)):
                hits = index.search(qv, 10)
                local_ranked.append([h.id for h in hits])
                reason = weak_evidence(hits, index, bundle.fingerprint, Policy(), comprehensive=False)
                auto_ranked.append(local_ranked[-1] if reason is None else server_ranked[i])
                local_answers += reason is None
            local, auto = ndcg_at_10(local_ranked, qids, qrels), ndcg_at_10(auto_ranked, qids, qrels)
            share = local_answers / len(qids)
            print(
                f"{name:>10} {dims:>5} {local:>7.3f} {full:>7.3f} {auto:>7.3f} {share:>17.1%} "
                f"{threshold:>10.3f}"
            )
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


def query_encoders(bundle: EdgeBundle, dims: int) -> dict[str, Callable[[str], np.ndarray]]:
    """One query text -> its rotated ``dims`` edge vector, per encoder (same prompt, projection)."""
    from sentence_transformers import SentenceTransformer

    from server.model import load_spec

    spec = load_spec()
    model = SentenceTransformer(str(spec.path), device="cpu")  # float32, as loaded
    model.max_seq_length = spec.max_tokens
    prefix = bundle.prompt(bundle.manifest.query_prompt_name)

    def torch_query(text: str) -> np.ndarray:
        full = model.encode([prefix + text], convert_to_numpy=True)
        vector: np.ndarray = bundle.projection.apply(np.asarray(full, dtype=np.float32), dims)[0]
        return vector

    return {
        "int8 ONNX (edge default)": lambda text: bundle.embed([text], dims, int8=True)[0],
        "fp32 ONNX": lambda text: bundle.embed([text], dims, int8=False)[0],
        "torch fp32 (sentence-transformers)": torch_query,
    }


def latency(
    args: argparse.Namespace,
    bundle: EdgeBundle,
    ids: list[str],
    qtexts: list[str],
    corpus: np.ndarray,
    work: Path,
) -> None:
    """Embed + search p50/p99 per encoder, interleaved query by query, at 5k and 100k vectors."""
    dims = 128
    encoders = query_encoders(bundle, dims)
    names = list(encoders)
    for name in names:  # first calls (session/graph warm-up) are not what a query costs
        for text in qtexts[:5]:
            encoders[name](text)
    print(
        f"\nedge query latency, embed + search (rotated {dims}-dim f16 usearch, k=10), "
        f"{args.latency_queries} queries, one per call, encoders interleaved"
    )
    print(
        f"{'vectors':>8} {'encoder':<35} {'p50 ms':>7} {'p99 ms':>7} {'embed p50':>10} "
        f"{'search p50':>11} {'p50 vs torch':>13}"
    )
    rng = np.random.default_rng(0)
    base = bundle.projection.apply(corpus, dims)
    for n in (5_000, 100_000):
        index = LocalIndex(work / f"lat{n}", dims=dims)
        index.upsert(ids, base, [""] * len(ids), [{}] * len(ids), source="sync")
        if n > len(ids):
            extra = rng.standard_normal((n - len(ids), dims)).astype(np.float32)
            extra /= np.linalg.norm(extra, axis=1, keepdims=True)
            for start in range(0, len(extra), 20_000):
                part = extra[start : start + 20_000]
                index.upsert([f"synthetic-{start + j}" for j in range(len(part))], part, [""] * len(part),
                             [{}] * len(part), source="sync")  # fmt: skip
        load_before = os.getloadavg()[0]  # the box is shared: say how busy it was
        total: dict[str, list[float]] = {name: [] for name in names}
        embed: dict[str, list[float]] = {name: [] for name in names}
        search: dict[str, list[float]] = {name: [] for name in names}
        for q, text in enumerate(qtexts[: args.latency_queries]):
            for name in names[q % len(names) :] + names[: q % len(names)]:  # rotate who goes first
                t0 = time.perf_counter()
                qv = encoders[name](text)
                t1 = time.perf_counter()
                index.search(qv, 10)
                t2 = time.perf_counter()
                total[name].append((t2 - t0) * 1e3)
                embed[name].append((t1 - t0) * 1e3)
                search[name].append((t2 - t1) * 1e3)
        load_after = os.getloadavg()[0]
        torch_p50 = float(np.percentile(total[names[-1]], 50))
        for name in names:
            p50, p99 = np.percentile(total[name], 50), np.percentile(total[name], 99)
            print(
                f"{len(index):>8} {name:<35} {p50:>7.1f} {p99:>7.1f} {np.percentile(embed[name], 50):>10.1f} "
                f"{np.percentile(search[name], 50):>11.2f} {p50 / torch_p50:>12.2f}x"
            )
        print(f"{'':>8} (1-min load average {load_before:.1f} before these rows, {load_after:.1f} after)")
        index.close()


def index_bytes(bundle: EdgeBundle, ids: list[str], corpus: np.ndarray, work: Path) -> None:
    """Saved usearch bytes per document: each edge dtype at 128 dims, and the server's index."""
    from server.settings import Settings
    from server.store.index import CollectionIndex

    dims = 128
    vectors = bundle.projection.apply(corpus, dims)
    print(f"\nindex bytes per document: saved usearch files of {len(ids)} SciFact documents (ids and texts")
    print("live in sqlite, not counted); 'raw' = the vector payload alone, the rest is the HNSW graph")
    print(f"{'index':<26} {'files':<42} {'bytes':>10} {'bytes/doc':>10} {'raw/doc':>8}")
    for dtype in DTYPES:
        index = LocalIndex(work / f"bytes-{dtype}", dims=dims, dtype=dtype)
        index.upsert(ids, vectors, [""] * len(ids), [{}] * len(ids), source="sync")
        index.save()
        files = sorted((work / f"bytes-{dtype}").glob("vectors.*.usearch"))
        size = sum(f.stat().st_size for f in files)
        label = f"edge {dtype}, {dims} dims"
        raw = {"f16": 2 * dims, "i8": dims, "b1": dims // 8 + 2 * dims}[dtype]
        names = " + ".join(f.name for f in files)
        print(f"{label:<26} {names:<42} {size:>10,} {size / len(ids):>10.0f} {raw:>8}")
        index.close()
    # The server's own index class, with the layout the server gives it (see server.runtime.build_runtime).
    settings, spec = Settings(), bundle.manifest
    server = CollectionIndex(
        "scifact",
        work / "server" / "scifact.usearch",
        ndim=spec.dimension,
        metric="ip" if spec.normalize else "cos",
        dtype=settings.index_dtype,
        fingerprint=spec.model_fingerprint,
    )
    server.index.add(np.arange(len(ids), dtype=np.uint64), corpus)
    server.save()
    label = f"server {settings.index_dtype}, {spec.dimension} dims"
    size = server.nbytes()
    raw = {"f32": 4, "f16": 2, "i8": 1}[settings.index_dtype] * spec.dimension
    print(f"{label:<26} {server.path.name:<42} {size:>10,} {size / len(ids):>10.0f} {raw:>8}")


def install_sizes(args: argparse.Namespace) -> None:
    """du of the venvs given (with the install times passed in); "not measured" for the others."""
    parts = []
    for name, venv, note in (
        ("edge", args.edge_venv, args.edge_install_time),
        ("server", args.server_venv, args.server_install_time),
    ):
        if venv is None:
            parts.append(f"{name} venv not measured")
            continue
        kib = int(
            subprocess.run(
                ["du", "-sk", str(venv)], capture_output=True, text=True, check=True
            ).stdout.split()[0]
        )
        text = f"{name} venv {kib / 1024:,.0f} MiB ({venv})"
        parts.append(text + (f", install {note}" if note else ""))
    print("\ninstall sizes (du -sk): " + "; ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=None, help="directory caching corpus vectors")
    parser.add_argument("--server", default=None, help="also measure Search on this server")
    parser.add_argument("--collection", default="scifact")
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument(
        "--only-latency",
        action="store_true",
        help="skip the nDCG tables (latency, index bytes and install sizes only)",
    )
    parser.add_argument(
        "--only-quality", action="store_true", help="the nDCG and STS tables only (no latency, sizes)"
    )
    parser.add_argument("--edge-venv", type=Path, default=None, help="venv of pip install '.[edge]' to du")
    parser.add_argument(
        "--server-venv", type=Path, default=None, help="venv of pip install '.[server]' to du"
    )
    parser.add_argument("--edge-install-time", default="", help="measured install time to print, e.g. '31 s'")
    parser.add_argument("--server-install-time", default="", help="measured install time to print")
    args = parser.parse_args()
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)

    from server.edge_bundle import build_bundle
    from server.model import load_spec
    from server.onnx_export import ensure_onnx, onnx_cache_dir
    from server.settings import Settings

    data = load_scifact()
    ids, texts, qids, qtexts, _qrels = data
    corpus = torch_vectors(texts, args.cache, "scifact_corpus")
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
    print(f"SciFact test: {len(qids)} queries, {len(ids)} documents; rotation fitted on the corpus vectors")
    if not args.only_latency:
        from server.edge_adaptor import MIN_FIT_DOCS, pseudo_query_sentences
        from server.edge_builder import fit_projection

        sentences = pseudo_query_sentences(texts)
        pseudo = torch_vectors(sentences, args.cache, "scifact_pseudo_queries")
        t0 = time.perf_counter()
        adaptor = fit_projection(
            corpus,
            spec.dimension,
            min_vectors=2,
            kind="adaptor",
            pseudo_queries=pseudo,
            adaptor_min_docs=MIN_FIT_DOCS,
        )
        print(
            f"adaptor fitted on the {len(ids)} corpus vectors + {len(sentences)} pseudo-query sentences "
            f"of the corpus in {time.perf_counter() - t0:.1f}s ({torch_threads()} torch threads)\n"
        )
        query_full = torch_vectors(qtexts, args.cache, "scifact_queries")
        quality(args, bundle, rotation, adaptor, data, corpus, query_full, work)
    if args.only_quality:
        return
    latency(args, bundle, ids, qtexts, corpus, work)
    index_bytes(bundle, ids, corpus, work)
    install_sizes(args)


if __name__ == "__main__":
    main()
