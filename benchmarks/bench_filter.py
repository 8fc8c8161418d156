"""Filtered Search latency on SciFact through a real server's Search RPC, and the crossover that
sets ``--search-filter-exact-max``.

Every SciFact document (BEIR test corpus) is ingested with synthetic metadata: ``rank``, a
seeded permutation of 0..N-1, and ``bucket`` = rank mod 1000. ``{"rank": {"lt": c}}`` keeps
exactly c documents; ``{"bucket": {"lt": 1000 * s}}`` keeps the share s.

1. **Crossover** (server started with ``--search-filter-exact-max 0``: an approximate request
   always asks the index, oversampled, falling back to exact when too few candidates pass): for
   each kept count c, the latency of an exact request (brute force over the kept documents:
   what the server does below the threshold) against the approximate one. The threshold is the
   kept count from which the index is faster.
2. **Selectivity** (server restarted with the default threshold): latency at 100%, 10%, 1% and
   0.1% kept, for a default (approximate) request, an exact one and LEXICAL, beside no filter;
   and the recall@k of the default request against the exact answer.

Queries are the first ``--queries`` SciFact test queries, searched by their vector (Embed with
the query prompt, once; ``SearchRequest.vector``): the timings hold no query embedding. Each
configuration is warmed once (the metadata table and the brute-force matrix are built per
collection version) and timed over every query, client-side, per RPC.

    python benchmarks/bench_filter.py --data-dir /tmp/bench-filter   # reuse it to skip ingest
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from _common import SHARED_DATA, RunRecord, add_json_argument, server_process
from report import filtered_search

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as rpc
from server.evaluation.datasets import load_beir

COLLECTION = "scifact-filter"
SELECTIVITY = (1.0, 0.1, 0.01, 0.001)
# The edge bundle plays no part here: PCA instead of the adaptor, which embeds ~10,000
# pseudo-query sentences at the start of a server holding SciFact (minutes on 2 cores).
SERVER_ARGS = ("--edge-projection", "rotation")
KEPT_COUNTS = (5, 10, 25, 50, 100, 250, 500, 1000, 2000, 3000, 4000)


def ingest(address: str, corpus: dict[str, str], seed: int) -> int:
    """Ingest the corpus with its synthetic metadata (cached on a rerun); returns N."""
    ids = list(corpus)
    order = list(range(len(ids)))
    random.Random(seed).shuffle(order)
    requests = []
    for doc_id, rank in zip(ids, order, strict=True):
        request = pb.IngestRequest(collection=COLLECTION, id=doc_id, text=corpus[doc_id])
        request.metadata.update({"rank": rank, "bucket": rank % 1000})
        requests.append(request)
    started = time.perf_counter()
    with grpc.insecure_channel(address) as channel:
        acks = list(rpc.CollectionServiceStub(channel).Ingest(iter(requests), timeout=3600))
    errors = [a for a in acks if a.HasField("error")]
    if errors:
        raise RuntimeError(f"{len(errors)} documents refused, first: {errors[0].error.message}")
    print(f"ingested {len(acks)} documents in {time.perf_counter() - started:.1f} s", flush=True)
    return len(acks)


def query_vectors(address: str, queries: list[str]) -> list[list[float]]:
    with grpc.insecure_channel(address) as channel:
        service = rpc.EmbeddingServiceStub(channel)
        prompt = service.Info(pb.InfoRequest(), timeout=60).query_prompt_name
        reply = service.Embed(
            pb.EmbedRequest(inputs=queries, options=pb.EmbedOptions(prompt_name=prompt)), timeout=600
        )
    return [np.frombuffer(e.data, dtype="<f4").tolist() for e in reply.embeddings]


def timed(service: Any, requests: list[pb.SearchRequest]) -> tuple[dict[str, float], list[list[str]]]:
    """p50 / p95 / mean milliseconds over the requests (after one warm-up), and the ids."""
    service.Search(requests[0], timeout=120)
    times: list[float] = []
    ranked: list[list[str]] = []
    for request in requests:
        started = time.perf_counter()
        reply = service.Search(request, timeout=120)
        times.append((time.perf_counter() - started) * 1e3)
        ranked.append([h.id for h in reply.hits])
    times.sort()
    return {
        "p50": round(statistics.median(times), 2),
        "p95": round(times[min(len(times) - 1, int(0.95 * len(times)))], 2),
        "mean": round(statistics.fmean(times), 2),
    }, ranked


def requests_for(
    vectors: list[list[float]], texts: list[str], k: int, spec: str, kind: str
) -> list[pb.SearchRequest]:
    common: dict[str, Any] = {"collection": COLLECTION, "k": k, "filter": spec, "include_text": False}
    if kind == "lexical":
        return [pb.SearchRequest(query=t, mode=pb.SEARCH_MODE_LEXICAL, **common) for t in texts]
    return [pb.SearchRequest(vector=v, exact=kind == "exact", **common) for v in vectors]


def crossover(address: str, vectors: list[list[float]], texts: list[str], k: int, n: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with grpc.insecure_channel(address) as channel:
        service = rpc.CollectionServiceStub(channel)
        for count in [c for c in KEPT_COUNTS if c < n] + [n]:
            spec = json.dumps({"rank": {"lt": count}})
            exact, _ = timed(service, requests_for(vectors, texts, k, spec, "exact"))
            index, _ = timed(service, requests_for(vectors, texts, k, spec, "approximate"))
            rows.append({"kept": count, "exact_ms": exact, "index_ms": index})
            print(
                f"  kept {count:>5}: exact p50 {exact['p50']:7.2f} ms, index p50 {index['p50']:7.2f} ms",
                flush=True,
            )
    # The threshold: the largest kept count below the first from which the index stays faster.
    threshold = rows[-1]["kept"]
    for i in range(len(rows)):
        if all(r["index_ms"]["p50"] < r["exact_ms"]["p50"] for r in rows[i:]):
            threshold = rows[i - 1]["kept"] if i else 0
            break
    return {"rows": rows, "measured_threshold": threshold}


def selectivity(
    address: str, vectors: list[list[float]], texts: list[str], k: int, n: int
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with grpc.insecure_channel(address) as channel:
        service = rpc.CollectionServiceStub(channel)
        none_default, _ = timed(service, requests_for(vectors, texts, k, "", "approximate"))
        none_exact, _ = timed(service, requests_for(vectors, texts, k, "", "exact"))
        rows.append({"share": None, "kept": n, "default_ms": none_default, "exact_ms": none_exact})
        for share in SELECTIVITY:
            spec = json.dumps({"bucket": {"lt": round(1000 * share)}})
            default, approx = timed(service, requests_for(vectors, texts, k, spec, "approximate"))
            exact, truth = timed(service, requests_for(vectors, texts, k, spec, "exact"))
            lexical, _ = timed(service, requests_for(vectors, texts, k, spec, "lexical"))
            found = sum(len(set(a) & set(t)) for a, t in zip(approx, truth, strict=True))
            wanted = sum(len(t) for t in truth)
            kept = sum(1 for rank in range(n) if rank % 1000 < round(1000 * share))
            rows.append(
                {
                    "share": share,
                    "kept": kept,
                    "default_ms": default,
                    "exact_ms": exact,
                    "lexical_ms": lexical,
                    "recall_at_k": round(found / wanted, 4) if wanted else None,
                }
            )
            print(
                f"  {share:>6.1%} ({kept} kept): default p50 {default['p50']:.2f} ms, "
                f"exact {exact['p50']:.2f}, lexical {lexical['p50']:.2f}, "
                f"recall@{k} {rows[-1]['recall_at_k']}",
                flush=True,
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", type=Path, default=SHARED_DATA / "scifact")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="server data directory (reuse: no re-embedding)"
    )
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument(
        "--threshold",
        type=int,
        default=None,
        help="--search-filter-exact-max for part 2 (default: the server's)",
    )
    add_json_argument(parser, "bench_filter")
    args = parser.parse_args()
    record = RunRecord("bench_filter")
    dataset = load_beir(args.dataset, "test")
    texts = list(dataset.queries.values())[: args.queries]
    with tempfile.TemporaryDirectory(prefix="bench-filter-") as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        with server_process(data_dir, *SERVER_ARGS, "--search-filter-exact-max", "0") as server:
            n = ingest(server.address, dataset.corpus, args.seed)
            vectors = query_vectors(server.address, texts)
            print("crossover (server with --search-filter-exact-max 0):", flush=True)
            cross = crossover(server.address, vectors, texts, args.k, n)
        extra = [] if args.threshold is None else ["--search-filter-exact-max", str(args.threshold)]
        with server_process(data_dir, *SERVER_ARGS, *extra) as server:
            print(f"selectivity (server with {' '.join(extra) or 'the default threshold'}):", flush=True)
            rows = selectivity(server.address, vectors, texts, args.k, n)
    result = {
        "documents": n,
        "queries": len(texts),
        "k": args.k,
        "threshold": args.threshold,
        "crossover": cross,
        "selectivity": rows,
    }
    print()
    print("\n".join(filtered_search(result)))
    print(f"\nmeasured crossover: exact up to {cross['measured_threshold']} kept documents")
    print(record.load_line())
    record.write(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
