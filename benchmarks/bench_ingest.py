"""Store benchmark on SciFact: first ingest, cached re-ingest, search latency, bytes per document.

One fresh server and store (``embed-server serve``, default settings), the real model, the
corpus read as ``embed-server ingest`` reads it (title kept as metadata):
- first ``Ingest`` of the corpus (every document embedded): one pass, an absolute figure only.
  Throughput against peers is bench_throughput.py's job (interleaved rounds, same texts);
- the same corpus again: every document a content-hash hit, nothing embedded; ratio to the first
  (two passes in a row on the same data; the per-round spread of this ratio on 400-document
  slices is in bench_throughput.py's output);
- ``Search`` latency (k=10): distinct SciFact queries end to end (query embedded), then the same
  queries again (query-embedding LRU hit: store + index only) via the index, brute force and an
  int8 first pass with rescoring, the three cached modes interleaved query by query;
- bytes per document: LMDB pages in use (vectors float32 + text + metadata + log), index file.

    python benchmarks/bench_ingest.py [--limit N] [--queries 200] [--float16] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import SHARED_DATA, RunRecord, add_json_argument, embed_server

CORPUS = SHARED_DATA / "scifact"


def _docs(limit: int) -> list[tuple[str, str, dict[str, Any]]]:
    from server.commands.ingest import read_corpus

    return list(read_corpus(CORPUS / "corpus.jsonl.gz", limit))


def _queries(n: int) -> list[str]:
    from server.evaluation import load_beir

    return list(load_beir(CORPUS, "test").queries.values())[:n]


def _ingest(address: str, docs: list[tuple[str, str, dict[str, Any]]]) -> tuple[float, int, int]:
    """(seconds, embedded, cached) for one Ingest stream of ``docs``."""
    import grpc

    from protos.embedding.v1 import embedding_pb2 as pb
    from protos.embedding.v1.embedding_pb2_grpc import CollectionServiceStub

    def requests() -> Iterator[pb.IngestRequest]:
        for doc_id, text, metadata in docs:
            request = pb.IngestRequest(collection="scifact", id=doc_id, text=text)
            request.metadata.update(metadata)
            yield request

    embedded = cached = 0
    started = time.perf_counter()
    with grpc.insecure_channel(address) as channel:
        for ack in CollectionServiceStub(channel).Ingest(requests(), timeout=7200):
            if ack.HasField("error"):
                raise RuntimeError(f"{ack.id}: {ack.error.message}")
            cached += ack.cached
            embedded += not ack.cached
    return time.perf_counter() - started, embedded, cached


def _search_latencies(
    address: str, queries: list[str], modes: dict[str, dict[str, Any]]
) -> dict[str, list[float]]:
    """ms per Search (k=10) for each mode, the modes taken in a rotated order for every query."""
    import grpc

    from protos.embedding.v1 import embedding_pb2 as pb
    from protos.embedding.v1.embedding_pb2_grpc import CollectionServiceStub

    names = list(modes)
    out: dict[str, list[float]] = {name: [] for name in names}
    with grpc.insecure_channel(address) as channel:
        stub = CollectionServiceStub(channel)
        for q, query in enumerate(queries):
            for name in names[q % len(names) :] + names[: q % len(names)]:
                started = time.perf_counter()
                reply = stub.Search(
                    pb.SearchRequest(collection="scifact", query=query, k=10, **modes[name]), timeout=60
                )
                out[name].append((time.perf_counter() - started) * 1000)
                if len(reply.hits) != 10:
                    raise RuntimeError("search returned fewer than 10 hits")
    return out


def _bytes(data_dir: Path) -> tuple[int, int]:
    """(LMDB bytes in use, index file bytes) after the server stopped."""
    from server.store import open_store

    store = open_store(data_dir)
    try:
        info, stat = store.env.info(), store.env.stat()
        lmdb_bytes = (int(info["last_pgno"]) + 1) * int(stat["psize"])
    finally:
        store.close()
    index_bytes = sum(p.stat().st_size for p in (data_dir / "indexes").glob("*.usearch"))
    return lmdb_bytes, index_bytes


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=0, help="first N documents only (0 = all 5,183)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--float16", action="store_true", help="server stores float16 vectors")
    add_json_argument(parser, "bench_ingest")
    args = parser.parse_args()
    record = RunRecord("bench_ingest")

    docs = _docs(args.limit)
    queries = _queries(args.queries)
    rows: dict[str, Any] = {"documents": len(docs), "queries": len(queries)}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        with embed_server(data_dir, *(["--store-float16"] if args.float16 else [])) as address:
            seconds, embedded, cached = _ingest(address, docs)
            rows |= {"first_ingest_s": seconds, "first_embedded": embedded, "first_cached": cached}
            seconds, embedded, cached = _ingest(address, docs)
            rows |= {"reingest_s": seconds, "reingest_embedded": embedded, "reingest_cached": cached}
            # "index": distinct queries, each embedded (end to end); the other rows repeat them,
            # so the query-embedding LRU answers and only the store/index work is timed.
            timed = _search_latencies(address, queries, {"index": {}})
            timed |= _search_latencies(
                address,
                queries,
                {
                    "index_cached_query": {},
                    "exact_cached_query": {"exact": True},
                    "int8_cached_query": {"precision": 3},
                },
            )
            for name, latencies in timed.items():
                rows[f"search_{name}_p50_ms"] = statistics.median(latencies)
                rows[f"search_{name}_p95_ms"] = statistics.quantiles(latencies, n=20)[-1]
        lmdb_bytes, index_bytes = _bytes(data_dir)
    n = len(docs)
    rows |= {
        "first_docs_per_s": n / rows["first_ingest_s"],
        "reingest_docs_per_s": n / rows["reingest_s"],
        "lmdb_bytes_per_doc": lmdb_bytes / n,
        "index_bytes_per_doc": index_bytes / n,
    }
    rows["reingest_speedup"] = rows["reingest_docs_per_s"] / rows["first_docs_per_s"]
    stored = "float16" if args.float16 else "float32"
    print(f"SciFact, {n} documents, {len(queries)} queries (one fresh server, {stored} vectors)\n")
    print(f"{'measure':<44}{'value':>14}{'ratio':>16}")
    print(f"{'first Ingest, docs/s (one pass)':<44}{rows['first_docs_per_s']:>14.1f}")
    print(f"{'  embedded / cached':<44}{rows['first_embedded']:>7} / {rows['first_cached']:<5}")
    print(
        f"{'re-Ingest (content-hash hits), docs/s':<44}{rows['reingest_docs_per_s']:>14.1f}"
        f"{rows['reingest_speedup']:>12.1f}x 1st"
    )
    print(f"{'  embedded / cached':<44}{rows['reingest_embedded']:>7} / {rows['reingest_cached']:<5}")
    for name in ("index", "index_cached_query", "exact_cached_query", "int8_cached_query"):
        label = f"Search p50 / p95 ms ({name.replace('_', ' ')})"
        print(f"{label:<44}{rows[f'search_{name}_p50_ms']:>9.1f} / {rows[f'search_{name}_p95_ms']:.1f}")
    print(f"{'LMDB bytes per document':<44}{rows['lmdb_bytes_per_doc']:>14.0f}")
    print(f"{'index bytes per document (usearch f16)':<44}{rows['index_bytes_per_doc']:>14.0f}")
    print(record.load_line())
    record.write(args.json, {"float16": args.float16, **rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
