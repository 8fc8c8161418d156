"""Reference quality numbers without our server: in-process sentence-transformers, brute force.

Validates the evaluator's loader and metrics against MTEB's published all-MiniLM-L6-v2 scores
(SciFact test nDCG@10 0.64508, STS Benchmark test Spearman 0.8203) and gives the baseline the
server path must match.

    python benchmarks/quality_reference.py --dataset ../shared/data/scifact \
        --sts ../shared/data/stsb/sts-test.csv [--dtype bfloat16] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, RunRecord, add_json_argument

from server.evaluation import evaluate_run, load_beir, load_sts, spearman
from server.evaluation.metrics import RETRIEVAL_METRICS


def _model(dtype: str):  # type: ignore[no-untyped-def]
    import torch
    from sentence_transformers import SentenceTransformer

    from server.model import load_spec

    spec = load_spec()
    model_kwargs = None if dtype == "float32" else {"torch_dtype": getattr(torch, dtype)}
    model = SentenceTransformer(str(spec.path), device="cpu", model_kwargs=model_kwargs)
    model.max_seq_length = spec.max_tokens
    return model


def _encode(model, texts: list[str], batch_size: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", type=Path, help="BEIR folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--sts", type=Path, help="STS Benchmark CSV")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--batch-size", type=int, default=32)
    add_json_argument(parser, "quality_reference")
    args = parser.parse_args()
    record = RunRecord("quality_reference")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = _model(args.dtype)
    results: dict[str, object] = {"dtype": args.dtype}
    if args.dataset:
        data = load_beir(args.dataset, args.split)
        doc_ids = list(data.corpus)
        start = time.perf_counter()
        docs = _encode(model, [data.corpus[d] for d in doc_ids], args.batch_size)
        seconds = time.perf_counter() - start
        qids = list(data.queries)
        queries = _encode(model, [data.queries[q] for q in qids], args.batch_size)
        scores = queries @ docs.T
        run: dict[str, dict[str, float]] = {}
        for row, qid in enumerate(qids):
            top = np.argpartition(-scores[row], min(100, len(doc_ids) - 1))[:100]
            run[qid] = {doc_ids[i]: float(scores[row, i]) for i in top}
        metrics = evaluate_run(run, data.qrels)
        # MTEB/BEIR option: drop a hit whose id equals the query id (off in MTEB's default).
        no_self = {q: {d: s for d, s in hits.items() if d != q} for q, hits in run.items()}
        results["retrieval"] = {
            **metrics,
            "ndcg@10_ignore_identical_ids": evaluate_run(no_self, data.qrels)["ndcg@10"],
            "queries": len(data.qrels),
            "docs": len(doc_ids),
            "docs_per_s": len(doc_ids) / seconds,
        }
        print(f"{data.name} {args.split} ({len(doc_ids)} docs, {len(qids)} queries, {args.dtype}):")
        for name in RETRIEVAL_METRICS:
            print(f"  {name:<11} {metrics[name]:.5f}")
        print(f"  corpus encode: {len(doc_ids) / seconds:.1f} docs/s")
    if args.sts:
        pairs = load_sts(args.sts)
        left = _encode(model, pairs.left, args.batch_size)
        right = _encode(model, pairs.right, args.batch_size)
        rho = spearman(np.sum(left * right, axis=1), pairs.gold)
        results["sts_spearman"] = rho
        print(f"STS {args.sts.name}: cosine Spearman {rho:.5f} ({len(pairs.gold)} pairs)")
    suffix = "" if args.dtype == "float32" else f"-{args.dtype}"
    record.write(args.json or RESULTS / f"quality_reference{suffix}.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
