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
3. **Lag.** How long after its ack a new document is in LEXICAL answers (SearchResponse.sequence
   at or past the ack's) in the test collection: ``--lag-singles`` documents one at a time, then
   a stream of ``--lag-stream`` abstracts (new texts each run, so they are embedded) while
   LEXICAL is polled every 50 ms; the probe documents are deleted afterwards.

    python benchmarks/bench_hybrid.py --server 127.0.0.1:50771   # a running server
    python benchmarks/bench_hybrid.py                            # starts one (fresh store)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import SHARED_DATA, RunRecord, add_json_argument, server_process

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc
from server import fusion
from server.evaluation.configs import EvalConfig
from server.evaluation.datasets import read_qrels
from server.evaluation.metrics import evaluate_run
from server.evaluation.runner import EvalOptions, run_evaluation
from server.evaluation.server_path import ServerClient, collection_name

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


def lag(address: str, dataset: Path, singles: int, stream: int) -> dict[str, Any]:
    """Seconds from ack to a LEXICAL answer reflecting it (see the module docstring)."""
    import grpc

    from server.evaluation.datasets import load_beir

    data = load_beir(dataset, "test")
    collection = collection_name(data.name, list(data.corpus))
    abstracts = list(data.corpus.values())[:stream]
    channel = grpc.insecure_channel(address)
    service = pb_grpc.CollectionServiceStub(channel)
    probe = pb.SearchRequest(collection=collection, query="lagprobe", k=1, mode=pb.SEARCH_MODE_LEXICAL)

    def reached(sequence: int) -> float:
        while True:
            if service.Search(probe, timeout=60).sequence >= sequence:
                return time.perf_counter()
            time.sleep(0.01)

    one: list[float] = []
    for i in range(singles):
        text = f"Lagprobe single {i}: a document that says nothing else."
        [ack] = service.Ingest(iter([pb.IngestRequest(collection=collection, id=f"lagprobe-{i}", text=text)]))
        acked = time.perf_counter()
        one.append(reached(ack.sequence) - acked)
    acks: list[tuple[float, int]] = []
    run = time.time_ns()  # new texts each run: the stream is embedded, as a real one would be

    def send() -> None:
        requests = (
            pb.IngestRequest(
                collection=collection, id=f"lagprobe-stream-{i}", text=f"Lagprobe stream {run} {i}. {t}"
            )
            for i, t in enumerate(abstracts)
        )
        for ack in service.Ingest(requests, timeout=600):
            acks.append((time.perf_counter(), ack.sequence))

    sender = threading.Thread(target=send)
    sender.start()
    polls: list[tuple[float, int]] = []
    while sender.is_alive() or not polls or polls[-1][1] < max(s for _, s in acks):
        polls.append((time.perf_counter(), service.Search(probe, timeout=60).sequence))
        time.sleep(0.05)
    sender.join()
    streamed = [next(t for t, s in polls if t >= at and s >= seq) - at for at, seq in acks]
    ids = [f"lagprobe-{i}" for i in range(singles)] + [f"lagprobe-stream-{i}" for i in range(len(abstracts))]
    service.Delete(pb.DeleteRequest(collection=collection, ids=ids), timeout=60)
    channel.close()
    return {
        "collection": collection,
        "documents": len(data.corpus),
        "singles_s": [round(x, 3) for x in one],
        "stream_documents": len(abstracts),
        "stream_seconds": round(acks[-1][0] - acks[0][0], 2) if acks else 0.0,
        "stream_median_s": round(statistics.median(streamed), 3) if streamed else None,
        "stream_max_s": round(max(streamed), 3) if streamed else None,
    }


def measure(address: str, dataset: Path) -> list[dict[str, Any]]:
    outcome = run_evaluation(EvalOptions(server=address, dataset=dataset, configs=TEST_CONFIGS))
    return outcome.json_rows()


def report(dev: dict[str, Any], test: list[dict[str, Any]], lags: dict[str, Any]) -> None:
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
    print(
        f"\nlag, ack to LEXICAL: one at a time {lags['singles_s']} s; a stream of {lags['stream_documents']}"
    )
    print(
        f"  over {lags['stream_seconds']} s: median {lags['stream_median_s']} s, max {lags['stream_max_s']} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", default=None, help="HOST:PORT of a running server (default: start one)")
    parser.add_argument("--dataset", type=Path, default=SHARED_DATA / "scifact")
    parser.add_argument("--dev-docs", type=int, default=2000)
    parser.add_argument("--dev-queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--lag-singles", type=int, default=5)
    parser.add_argument("--lag-stream", type=int, default=400)
    add_json_argument(parser, "bench_hybrid")
    args = parser.parse_args()
    record = RunRecord("bench_hybrid")

    def run(address: str) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        client = ServerClient(address)
        try:
            client.wait_ready()
            dev = tune(client, args.dataset, args.dev_docs, args.dev_queries, args.seed)
        finally:
            client.close()
        test = measure(address, args.dataset)
        return dev, test, lag(address, args.dataset, args.lag_singles, args.lag_stream)

    if args.server:
        dev, test, lags = run(args.server)
    else:
        with (
            tempfile.TemporaryDirectory(prefix="bench-hybrid-") as tmp,
            server_process(Path(tmp) / "data") as server,
        ):
            dev, test, lags = run(server.address)
    report(dev, test, lags)
    print(record.load_line())
    record.write(args.json, {"server": args.server or "fresh", "dev": dev, "test": test, "lag": lags})
    return 0


if __name__ == "__main__":
    sys.exit(main())
