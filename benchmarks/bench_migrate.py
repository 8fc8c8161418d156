"""Online migration between two served models: its throughput against a cold ingest of the same
documents, and interactive Search latency while it runs against idle, in interleaved rounds.

One server serves the bundled model as "a" (default) and a second real model as "b" (the same
transformer with a seeded orthogonal Dense 384->256 head, server.model_variants, built into a
temporary directory), one encoder worker each, query cache off (every query is computed).
Each round takes two fresh slices of SciFact documents (so no text is ever a content-hash hit):

1. slice 1: cold ingest into a new collection (bound to "a"): docs/s; then its migration to
   "b" alone (the Migrate RPC, until the cutover): docs/s;
2. slice 2: cold ingest; ``--searches`` Search k=10 calls (SciFact queries) one at a time on
   it: idle latencies; then its migration to "b" while a client thread keeps sending the same
   Search calls one at a time: latencies, and the migration's docs/s under that load.

Ratios are taken within a round (migration docs/s / cold ingest docs/s of the same slice;
Search p99 during the migration / idle p99), then summarized as min / median / max over rounds.
The two models share the transformer (model "b" adds a 384x256 matrix product), so the cold
ingest on "a" does the same work per document as the migration to "b"; the migration also reads
the collection from the store and checks it at the cutover. Model "a" has the interactive lane
(searches run in the server process), model "b" none (its worker does the bulk work).

    python benchmarks/bench_migrate.py [--rounds 3] [--docs 60] [--searches 40] [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from _common import (
    REPO,
    SHARED_DATA,
    RunRecord,
    add_json_argument,
    fmt_spread,
    server_process,
    spread,
)

FIXTURES = REPO / "tests" / "fixtures" / "scifact"


def _scifact() -> tuple[list[tuple[str, str]], list[str]]:
    """(id, text) of every SciFact document and the query texts (shared data, else the
    repository's fixture subset)."""
    import gzip

    root = SHARED_DATA / "scifact" if (SHARED_DATA / "scifact" / "corpus.jsonl.gz").is_file() else FIXTURES
    docs = []
    with gzip.open(root / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            docs.append((str(row["_id"]), f"{row.get('title', '')}. {row['text']}".strip(". ")))
    with (root / "queries.jsonl").open(encoding="utf-8") as handle:
        queries = [json.loads(line)["text"] for line in handle]
    return docs, queries


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _search(stub: Any, pb: Any, collection: str, query: str) -> float:
    """Seconds one Search took; raises when it failed or came back empty."""
    started = time.perf_counter()
    reply = stub.Search(pb.SearchRequest(collection=collection, query=query, k=10), timeout=120)
    elapsed = time.perf_counter() - started
    if not reply.hits:
        raise RuntimeError(f"empty answer for {query!r} on {collection!r}")
    return elapsed


def _ingest(stub: Any, pb: Any, collection: str, docs: list[tuple[str, str]]) -> float:
    """Seconds a cold ingest of ``docs`` into a new ``collection`` took."""
    started = time.perf_counter()
    requests = (pb.IngestRequest(collection=collection, id=i, text=t) for i, t in docs)
    acks = list(stub.Ingest(requests, timeout=3600))
    elapsed = time.perf_counter() - started
    if any(a.error.code for a in acks) or any(a.chunks_cached for a in acks):
        raise RuntimeError("the cold ingest failed or found stored vectors")
    return elapsed


def _migrate(stub: Any, pb: Any, collection: str, docs: int) -> float:
    """Seconds the migration of ``collection`` to "b" took, to its cutover."""
    started = time.perf_counter()
    steps = list(stub.Migrate(pb.MigrateRequest(collection=collection, to_model="b"), timeout=3600))
    elapsed = time.perf_counter() - started
    if steps[-1].state != "cut_over" or steps[-1].embedded != docs:
        raise RuntimeError(f"migration of {collection!r}: {steps[-1]}")
    return elapsed


def run_round(
    address: str,
    alone: list[tuple[str, str]],
    loaded: list[tuple[str, str]],
    queries: list[str],
    searches: int,
    r: int,
) -> dict[str, Any]:
    """One round (see the module docstring): slice ``alone`` migrated alone, slice ``loaded``
    migrated under searches."""
    from protos.embedding.v1 import embedding_pb2 as pb
    from protos.embedding.v1.embedding_pb2_grpc import CollectionServiceStub

    with grpc.insecure_channel(address) as channel:
        stub = CollectionServiceStub(channel)
        ingest_s = _ingest(stub, pb, f"bench-migrate-{r}-alone", alone)
        migrate_s = _migrate(stub, pb, f"bench-migrate-{r}-alone", len(alone))
        collection = f"bench-migrate-{r}-loaded"
        loaded_ingest_s = _ingest(stub, pb, collection, loaded)
        cycle = itertools.cycle(queries)
        idle = [_search(stub, pb, collection, next(cycle)) for _ in range(searches)]

        during: list[float] = []
        errors: list[str] = []
        stop = threading.Event()

        def load() -> None:
            with grpc.insecure_channel(address) as own:
                own_stub = CollectionServiceStub(own)
                while not stop.is_set():
                    try:
                        during.append(_search(own_stub, pb, collection, next(cycle)))
                    except Exception as exc:
                        errors.append(str(exc))

        thread = threading.Thread(target=load)
        thread.start()
        try:
            loaded_migrate_s = _migrate(stub, pb, collection, len(loaded))
        finally:
            stop.set()
            thread.join(300)
        if errors:
            raise RuntimeError(f"searches during the migration of round {r} failed: {errors[:3]}")
    return {
        "docs": len(alone),
        "ingest_docs_s": len(alone) / ingest_s,
        "migrate_docs_s": len(alone) / migrate_s,
        "throughput_ratio": ingest_s / migrate_s,
        "loaded_ingest_docs_s": len(loaded) / loaded_ingest_s,
        "loaded_migrate_docs_s": len(loaded) / loaded_migrate_s,
        "loaded_throughput_ratio": loaded_ingest_s / loaded_migrate_s,
        "idle_p50_ms": 1000 * _percentile(idle, 50),
        "idle_p99_ms": 1000 * _percentile(idle, 99),
        "during_p50_ms": 1000 * _percentile(during, 50),
        "during_p99_ms": 1000 * _percentile(during, 99),
        "p99_ratio": _percentile(during, 99) / _percentile(idle, 99),
        "searches_during": len(during),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--docs", type=int, default=60, help="documents per slice (two slices per round)")
    parser.add_argument("--searches", type=int, default=40, help="idle searches per round")
    add_json_argument(parser, "bench_migrate")
    args = parser.parse_args()
    record = RunRecord("bench_migrate")
    docs, queries = _scifact()
    if len(docs) < 2 * args.rounds * args.docs:
        raise SystemExit(f"{len(docs)} documents: not enough for {args.rounds} rounds of 2 x {args.docs}")

    from server.model import load_spec
    from server.model_variants import build_projected_model

    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as tmp:
        b = build_projected_model(load_spec().path, Path(tmp) / "model-b")
        server_args = ("--model", "a=all-MiniLM-L6-v2", "--model", f"b={b}", "--workers", "1",
                       "--extra-model-workers", "1", "--compile", "off",
                       "--query-cache-size", "0")  # fmt: skip
        with server_process(Path(tmp) / "data", *server_args) as server:
            for r in range(args.rounds):
                alone = docs[2 * r * args.docs : (2 * r + 1) * args.docs]
                loaded = docs[(2 * r + 1) * args.docs : (2 * r + 2) * args.docs]
                result = run_round(server.address, alone, loaded, queries, args.searches, r)
                rounds.append(result)
                print(
                    f"round {r + 1}: cold ingest {result['ingest_docs_s']:.1f} docs/s, migration alone "
                    f"{result['migrate_docs_s']:.1f} docs/s (x{result['throughput_ratio']:.2f}), under "
                    f"searches x{result['loaded_throughput_ratio']:.2f}; Search p99 idle "
                    f"{result['idle_p99_ms']:.0f} ms, during the migration {result['during_p99_ms']:.0f} ms "
                    f"(x{result['p99_ratio']:.2f})",
                    flush=True,
                )

    def column(key: str) -> dict[str, float] | None:
        return spread([r[key] for r in rounds])

    rows = [
        ("cold ingest docs/s (model a)", column("ingest_docs_s"), ".1f"),
        ("migration docs/s (a -> b)", column("migrate_docs_s"), ".1f"),
        ("migration / cold ingest", column("throughput_ratio"), ".2f"),
        ("same, migration under searches", column("loaded_throughput_ratio"), ".2f"),
        ("Search p50 idle, ms", column("idle_p50_ms"), ".0f"),
        ("Search p50 during migration, ms", column("during_p50_ms"), ".0f"),
        ("Search p99 idle, ms", column("idle_p99_ms"), ".0f"),
        ("Search p99 during migration, ms", column("during_p99_ms"), ".0f"),
        ("Search p99 during / idle", column("p99_ratio"), ".2f"),
    ]
    print(f"\n{args.rounds} rounds of 2 x {args.docs} SciFact documents; min / median / max over rounds")
    print(f"| {'measure':<34} | {'min / median / max':<24} |")
    print(f"| {'-' * 34} | {'-' * 24} |")
    for name, values, spec in rows:
        print(f"| {name:<34} | {fmt_spread(values, spec):<24} |")
    print(record.load_line())
    median = statistics.median
    record.write(
        args.json,
        {
            "rounds": rounds,
            "summary": {
                "throughput_ratio_median": median(r["throughput_ratio"] for r in rounds),
                "loaded_throughput_ratio_median": median(r["loaded_throughput_ratio"] for r in rounds),
                "p99_ratio_median": median(r["p99_ratio"] for r in rounds),
            },
        },
    )


if __name__ == "__main__":
    main()
