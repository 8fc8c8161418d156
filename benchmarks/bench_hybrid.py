"""Dense, BM25 and hybrid search on SciFact through a real server: the fusion settings chosen on
non-test data, then every mode measured on the test queries.

1. **Choosing (never on test queries).** SciFact's train qrels are not in shared/, so the
   choice is made on a set built from the corpus itself: ``--dev-docs`` abstracts (seeded) that
   no test query judges, ingested *without their titles* into their own collection, and the
   titles of ``--dev-queries`` of them as queries, each judging its own abstract. Every query's
   dense and BM25 candidate lists (100 deep, as the server fuses them) come from the server once;
   WEIGHTED fusion is scored for alpha = 0.0, 0.1, ..., 1.0 and RRF for several k, with the
   server's own fusion code (server.fusion); the best alpha by nDCG@10 is the one to make
   ``fusion.DEFAULT_ALPHA``. A few queries then check that the server's HYBRID answers equal
   the client-side fusion.
2. **Measuring.** ``embed-server eval``'s configurations server/full/float32 (exact),
   server/full/float32/ann, server/bm25, server/hybrid/rrf and server/hybrid/weighted on the
   test split (the server's defaults for rrf_k and hybrid_alpha).

    python benchmarks/bench_hybrid.py --server 127.0.0.1:50771   # a running server
    python benchmarks/bench_hybrid.py                            # starts one (fresh store)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import SHARED_DATA, RunRecord, add_json_argument, server_process

from server import fusion
from server.evaluation.configs import EvalConfig
from server.evaluation.datasets import read_qrels
from server.evaluation.metrics import evaluate_run
from server.evaluation.runner import EvalOptions, run_evaluation
from server.evaluation.server_path import ServerClient

TEST_CONFIGS = (
    "server/full/float32",
    "server/full/float32/ann",
    "server/bm25",
    "server/hybrid/rrf",
    "server/hybrid/weighted",
)
ALPHAS = [round(0.1 * i, 1) for i in range(11)]
RRF_KS = (1, 10, 30, 60, 100, 300)
DENSE = EvalConfig("server", exact=False)
LEXICAL = EvalConfig("server", exact=False, mode="lexical")


def dev_set(dataset: Path, docs: int, queries: int, seed: int) -> tuple[dict[str, str], dict[str, str]]:
    """(abstracts without titles: id -> text, title queries: query id -> title) of documents no
    test query judges; each query judges the document it is the title of."""
    judged = {doc for rels in read_qrels(dataset / "qrels" / "test.tsv").values() for doc in rels}
    rows = []
    with gzip.open(dataset / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            title, text = str(row.get("title") or "").strip(), str(row.get("text") or "").strip()
            if row["_id"] not in judged and len(title.split()) >= 4 and text:
                rows.append((str(row["_id"]), title, text))
    rng = random.Random(seed)
    picked = rng.sample(rows, min(docs, len(rows)))
    corpus = {doc_id: text for doc_id, _, text in picked}
    asked = rng.sample(picked, min(queries, len(picked)))
    return corpus, {doc_id: title for doc_id, title, _ in asked}


def tune(client: ServerClient, dataset: Path, docs: int, queries: int, seed: int) -> dict[str, Any]:
    corpus, titles = dev_set(dataset, docs, queries, seed)
    digest = hashlib.sha256("\n".join(sorted(corpus)).encode()).hexdigest()[:8]
    collection = f"dev-scifact-titles-{digest}"
    summary = client.ingest(collection, corpus)
    client.wait_lexical(collection, summary.sequence)
    qrels = {doc_id: {doc_id: 1} for doc_id in titles}
    dense: dict[str, list[tuple[str, float]]] = {}
    lexical: dict[str, list[tuple[str, float]]] = {}
    for qid, title in titles.items():
        dense[qid] = list(client.search(collection, title, DENSE).items())
        lexical[qid] = list(client.search(collection, title, LEXICAL).items())

    def score(run: dict[str, list[tuple[str, float]]]) -> dict[str, float]:
        return evaluate_run({q: dict(ranked) for q, ranked in run.items()}, qrels)

    grid: dict[str, Any] = {"dense": score(dense), "bm25": score(lexical)}
    grid["weighted"] = {
        str(a): score({q: fusion.weighted(dense[q], lexical[q], a)[:100] for q in titles}) for a in ALPHAS
    }
    grid["rrf"] = {
        str(k): score({q: fusion.rrf([dense[q], lexical[q]], k)[:100] for q in titles}) for k in RRF_KS
    }
    best = max(ALPHAS, key=lambda a: (grid["weighted"][str(a)]["ndcg@10"], -abs(a - 0.5)))
    # the server's own fusion agrees with the client-side one (its default alpha)
    checked = 0
    for qid, title in list(titles.items())[:20]:
        served = client.search(
            collection, title, EvalConfig("server", exact=False, mode="hybrid", fusion="weighted")
        )
        mine = fusion.weighted(dense[qid], lexical[qid], fusion.DEFAULT_ALPHA)[:100]
        assert list(served) == [i for i, _ in mine], f"server and client fusion differ for {title!r}"
        checked += 1
    return {
        "collection": collection,
        "documents": len(corpus),
        "queries": len(titles),
        "seed": seed,
        "grid": grid,
        "best_alpha": best,
        "default_alpha": fusion.DEFAULT_ALPHA,
        "server_agrees_queries": checked,
    }


def measure(address: str, dataset: Path) -> list[dict[str, Any]]:
    outcome = run_evaluation(EvalOptions(server=address, dataset=dataset, configs=TEST_CONFIGS))
    return outcome.json_rows()


def report(dev: dict[str, Any], test: list[dict[str, Any]]) -> None:
    print(
        f"\nchoice on {dev['queries']} title queries over {dev['documents']} untitled abstracts (not test):"
    )
    print(f"  dense nDCG@10 {dev['grid']['dense']['ndcg@10']:.4f}, bm25 {dev['grid']['bm25']['ndcg@10']:.4f}")
    for a, m in dev["grid"]["weighted"].items():
        print(f"  weighted alpha {a}: nDCG@10 {m['ndcg@10']:.4f}  R@100 {m['recall@100']:.4f}")
    for k, m in dev["grid"]["rrf"].items():
        print(f"  rrf k {k}: nDCG@10 {m['ndcg@10']:.4f}  R@100 {m['recall@100']:.4f}")
    print(f"  best alpha {dev['best_alpha']} (server default {dev['default_alpha']})")
    print("\nSciFact test:")
    for row in test:
        if row.get("task") == "retrieval":
            print(f"  {row['label']:<26} nDCG@10 {row['ndcg@10']:.4f}  R@100 {row['recall@100']:.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", default=None, help="HOST:PORT of a running server (default: start one)")
    parser.add_argument("--dataset", type=Path, default=SHARED_DATA / "scifact")
    parser.add_argument("--dev-docs", type=int, default=2000)
    parser.add_argument("--dev-queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=13)
    add_json_argument(parser, "bench_hybrid")
    args = parser.parse_args()
    record = RunRecord("bench_hybrid")

    def run(address: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        client = ServerClient(address)
        try:
            client.wait_ready()
            dev = tune(client, args.dataset, args.dev_docs, args.dev_queries, args.seed)
        finally:
            client.close()
        return dev, measure(address, args.dataset)

    if args.server:
        dev, test = run(args.server)
    else:
        with (
            tempfile.TemporaryDirectory(prefix="bench-hybrid-") as tmp,
            server_process(Path(tmp) / "data") as server,
        ):
            dev, test = run(server.address)
    report(dev, test)
    print(record.load_line())
    record.write(args.json, {"server": args.server or "fresh", "dev": dev, "test": test})
    return 0


if __name__ == "__main__":
    sys.exit(main())
