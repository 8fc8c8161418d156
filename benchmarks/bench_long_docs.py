"""Long documents: nDCG@10 with truncation vs chunking (a document scores as its best chunk), on
the long SciFact set (benchmarks/build_long_scifact.py) and on plain SciFact, and what re-ingest
costs after one paragraph of every long document changed.

Everything goes through one real server (``embed-server serve``, fresh data directory): each
corpus is ingested twice through ``Ingest``, into one collection with ``chunking=false`` (cut at
the model's 256 tokens, as before) and one with ``chunking=true``; the test queries go through
``Search`` (exact, k=100). Then every long document gets one paragraph edited (seeded: a
sentence inserted or deleted, or a word replaced; see :func:`edit_one_paragraph`) and is
ingested again into the
chunked collection: the acks' chunks embedded / cached and the time, against the first chunked
ingest of the same set (every chunk embedded).

    python benchmarks/bench_long_docs.py [--queries N] [--json FILE]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from _common import SHARED_DATA, RunRecord, add_json_argument, server_process
from build_long_scifact import SEED, SEPARATOR, build

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import CollectionServiceStub
from server.evaluation.datasets import load_beir
from server.evaluation.metrics import evaluate_run

# Sentences an edit inserts (one, chosen per document): as in real edits, whether the new
# sentence's start becomes a chunk anchor (one in five) varies with its words.
INSERTED = (
    "This sentence was added when the paragraph was revised.",
    "A later review confirmed these observations in an independent cohort.",
    "We note that the sample size limits the strength of this conclusion.",
    "Further work is needed to establish the mechanism involved.",
    "These results were reproduced in a second laboratory.",
)


def _requests(collection: str, corpus: dict[str, str], chunking: bool) -> Iterator[pb.IngestRequest]:
    for doc_id, text in corpus.items():
        yield pb.IngestRequest(collection=collection, id=doc_id, text=text, chunking=chunking)


def ingest(stub: Any, collection: str, corpus: dict[str, str], chunking: bool) -> dict[str, Any]:
    start = time.perf_counter()
    acks = list(stub.Ingest(_requests(collection, corpus, chunking), timeout=7200))
    seconds = time.perf_counter() - start
    errors = [a for a in acks if a.HasField("error")]
    if errors:
        raise RuntimeError(f"{len(errors)} documents failed, first: {errors[0].error.message}")
    return {
        "documents": len(acks),
        "seconds": round(seconds, 1),
        "chunks_embedded": sum(a.chunks_embedded for a in acks),
        "chunks_cached": sum(a.chunks_cached for a in acks),
        "chunked_documents": sum(a.chunks_embedded + a.chunks_cached > 1 for a in acks),
        "max_chunks_embedded_per_document": max((a.chunks_embedded for a in acks), default=0),
    }


def ndcg(stub: Any, collection: str, queries: dict[str, str], qrels: Any) -> dict[str, float]:
    run: dict[str, dict[str, float]] = {}
    for qid, text in queries.items():
        reply = stub.Search(
            pb.SearchRequest(collection=collection, query=text, k=100, exact=True), timeout=120
        )
        run[qid] = {h.id: h.score for h in reply.hits}
    metrics = evaluate_run(run, qrels)
    return {name: round(value, 4) for name, value in metrics.items()}


def edit_one_paragraph(corpus: dict[str, str], seed: int) -> dict[str, str]:
    """Each document with one paragraph (seeded choice) changed in one of three ways (seeded):
    a sentence inserted between two of its sentences, one of its sentences deleted, or one of
    its words replaced."""
    rng = random.Random(seed)
    out = {}
    for doc_id, text in corpus.items():
        paragraphs = text.split(SEPARATOR)
        i = rng.randrange(len(paragraphs))
        sentences = paragraphs[i].split(". ")
        kind = rng.choice(("insert", "delete", "word")) if len(sentences) > 2 else "word"
        if kind == "insert":
            sentences.insert(rng.randrange(1, len(sentences)), rng.choice(INSERTED).rstrip("."))
            paragraphs[i] = ". ".join(sentences)
        elif kind == "delete":
            del sentences[rng.randrange(1, len(sentences) - 1)]
            paragraphs[i] = ". ".join(sentences)
        else:
            words = paragraphs[i].split(" ")
            words[rng.randrange(len(words))] = "revised"
            paragraphs[i] = " ".join(words)
        out[doc_id] = SEPARATOR.join(paragraphs)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scifact", type=Path, default=SHARED_DATA / "scifact")
    parser.add_argument("--seed", type=int, default=SEED, help="the long set's seed (and the edits')")
    parser.add_argument("--queries", type=int, default=0, help="first N test queries (0 = all 300)")
    parser.add_argument(
        "--distractors", type=int, default=-1, help="distractor long documents (-1 = all the abstracts left)"
    )
    parser.add_argument("--skip-plain", action="store_true", help="leave plain SciFact out")
    parser.add_argument("--workers", type=int, default=0, help="server encoder workers (0 = auto)")
    add_json_argument(parser, "bench_long_docs")
    args = parser.parse_args()
    record = RunRecord("bench_long_docs")
    long_set = build(args.scifact, seed=args.seed, queries=args.queries, distractors=args.distractors)
    plain = load_beir(args.scifact, "test")
    # Plain SciFact over the same abstracts (every one of them, for the whole set), one per
    # document, with the same queries: what the long set's nDCG@10 is compared with.
    used = {abstract for parts in long_set["paragraphs"].values() for abstract in parts}
    plain_corpus = {doc: text for doc, text in plain.corpus.items() if doc in used}
    plain_queries = {q: plain.queries[q] for q in long_set["queries"]}
    plain_qrels = {q: plain.qrels[q] for q in long_set["queries"]}
    results: dict[str, Any] = {
        "seed": args.seed,
        "queries": len(long_set["queries"]),
        "long_documents": len(long_set["corpus"]),
        "abstracts": len(plain_corpus),
    }
    with tempfile.TemporaryDirectory(prefix="bench-long-") as scratch:
        server_args = ("--workers", str(args.workers)) if args.workers else ()
        with (
            server_process(Path(scratch) / "data", *server_args, timeout=1200) as server,
            grpc.insecure_channel(
                server.address, options=[("grpc.max_receive_message_length", 64 << 20)]
            ) as channel,
        ):
            stub = CollectionServiceStub(channel)
            if not args.skip_plain:
                for chunking in (False, True):
                    name = f"plain-{'chunked' if chunking else 'truncated'}"
                    results[f"{name}/ingest"] = ingest(stub, name, plain_corpus, chunking)
                    results[f"{name}/metrics"] = ndcg(stub, name, plain_queries, plain_qrels)
                    print(name, results[f"{name}/ingest"], results[f"{name}/metrics"], flush=True)
            for chunking in (False, True):
                name = f"long-{'chunked' if chunking else 'truncated'}"
                results[f"{name}/ingest"] = ingest(stub, name, long_set["corpus"], chunking)
                results[f"{name}/metrics"] = ndcg(stub, name, long_set["queries"], long_set["qrels"])
                print(name, results[f"{name}/ingest"], results[f"{name}/metrics"], flush=True)
            edited = edit_one_paragraph(long_set["corpus"], args.seed)
            results["long-chunked/reingest-edited"] = ingest(stub, "long-chunked", edited, True)
            print("re-ingest, one paragraph edited per document", results["long-chunked/reingest-edited"])
    path = record.write(args.json, results)
    first, again = results["long-chunked/ingest"], results["long-chunked/reingest-edited"]
    docs = again["documents"]
    print(
        f"re-ingest: {again['chunks_embedded']} chunks embedded ({again['chunks_embedded'] / docs:.2f} per "
        f"document, at most {again['max_chunks_embedded_per_document']}), {again['chunks_cached']} cached, "
        f"{again['seconds']} s against {first['seconds']} s for the first ingest ({first['chunks_embedded']} "
        f"chunks embedded); results in {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
