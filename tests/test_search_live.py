"""Search through the real server and model on SciFact documents: index vs brute force,
Matryoshka dimensions, int8/binary first pass with rescoring, delete, errors."""

from __future__ import annotations

import grpc
import pytest

from protos.embedding.v1 import embedding_pb2 as pb
from tests._collections import ingest, ranked, scifact_docs, scifact_queries, search, stub

COLLECTION = "search-scifact"
N = 300


@pytest.fixture(scope="module")
def corpus(live_server):  # type: ignore[no-untyped-def]
    docs = scifact_docs(N)
    acks = ingest(live_server.address, COLLECTION, docs)
    assert not any(a.HasField("error") for a in acks)
    return docs


def test_index_agrees_with_brute_force(live_server, corpus) -> None:  # type: ignore[no-untyped-def]
    agree = 0
    queries = scifact_queries(20)
    for query in queries:
        approx = search(live_server.address, COLLECTION, query, k=10)
        exact = search(live_server.address, COLLECTION, query, k=10, exact=True)
        assert len(exact.hits) == 10 and exact.sequence == N
        scores = [h.score for h in exact.hits]
        assert scores == sorted(scores, reverse=True) and -1.0 <= scores[-1] <= scores[0] <= 1.0
        agree += len(set(ranked(approx)) & set(ranked(exact)))
        assert approx.hits[0].text and approx.model_fingerprint.startswith("all-MiniLM-L6-v2@")
    assert agree / (10 * len(queries)) >= 0.9  # f16 HNSW recall@10 against exact


def test_a_document_finds_itself(live_server, corpus) -> None:  # type: ignore[no-untyped-def]
    doc_id, text, metadata = corpus[42]
    hit = search(live_server.address, COLLECTION, text, k=1, prompt_name="").hits[0]
    assert hit.id == doc_id and hit.score > 0.99
    assert hit.text == text and hit.metadata["title"] == metadata["title"]


def test_truncated_and_quantized_first_passes_rescore_to_the_exact_answer(live_server, corpus) -> None:  # type: ignore[no-untyped-def]
    queries = scifact_queries(10)
    overlap = {"int8": 0, "ubinary": 0, "dims": 0}
    for query in queries:
        exact = ranked(search(live_server.address, COLLECTION, query, k=10, exact=True))
        int8 = search(live_server.address, COLLECTION, query, k=10, precision=pb.PRECISION_INT8)
        binary = search(
            live_server.address, COLLECTION, query, k=10, precision=pb.PRECISION_UBINARY, rescore_multiplier=8
        )
        dims = search(live_server.address, COLLECTION, query, k=10, dimensions=192)
        overlap["int8"] += len(set(ranked(int8)) & set(exact))
        overlap["ubinary"] += len(set(ranked(binary)) & set(exact))
        overlap["dims"] += len(set(ranked(dims)) & set(exact))
        # rescoring is at full precision: a hit's score is its exact cosine
        exact_scores = {
            h.id: h.score for h in search(live_server.address, COLLECTION, query, k=N, exact=True).hits
        }
        for hit in int8.hits:
            assert hit.score == pytest.approx(exact_scores[hit.id], abs=1e-5)
    assert overlap["int8"] >= 95  # of 100
    assert overlap["ubinary"] >= 90
    assert overlap["dims"] >= 60  # 192 of 384 dims of a model not trained for truncation


def test_include_text_false_and_k(live_server, corpus) -> None:  # type: ignore[no-untyped-def]
    response = search(live_server.address, COLLECTION, "cancer", k=3, include_text=False)
    assert len(response.hits) == 3 and all(h.text == "" and not h.metadata.fields for h in response.hits)
    assert len(search(live_server.address, COLLECTION, "cancer").hits) == 10  # k=0 means 10


@pytest.mark.parametrize(
    ("options", "code", "words"),
    [
        ({"collection": "search-none", "query": "x"}, grpc.StatusCode.NOT_FOUND, "search-none"),
        ({"collection": COLLECTION, "query": ""}, grpc.StatusCode.INVALID_ARGUMENT, "query"),
        ({"collection": COLLECTION, "query": "x", "k": 5000}, grpc.StatusCode.INVALID_ARGUMENT, "1000"),
        (
            {"collection": COLLECTION, "query": "x", "dimensions": 999},
            grpc.StatusCode.INVALID_ARGUMENT,
            "384",
        ),
        (
            {"collection": COLLECTION, "query": "x", "prompt_name": "nope"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "nope",
        ),
    ],
)
def test_bad_searches_name_the_problem(live_server, corpus, options, code, words) -> None:  # type: ignore[no-untyped-def]
    channel, service = stub(live_server.address)
    with channel, pytest.raises(grpc.RpcError) as info:
        service.Search(pb.SearchRequest(**options), timeout=60)
    assert info.value.code() == code and words in info.value.details()


def test_delete_removes_from_index_and_brute_force(live_server) -> None:  # type: ignore[no-untyped-def]
    docs = scifact_docs(30, skip=N)
    ingest(live_server.address, "search-delete", docs)
    target, text, _ = docs[3]
    assert search(live_server.address, "search-delete", text, k=1, prompt_name="").hits[0].id == target
    channel, service = stub(live_server.address)
    with channel:
        reply = service.Delete(
            pb.DeleteRequest(collection="search-delete", ids=[target, "never-there"]), timeout=60
        )
    assert reply.deleted == 1 and reply.sequence == 31
    for exact in (False, True):
        response = search(live_server.address, "search-delete", text, k=30, exact=exact)
        assert target not in ranked(response) and len(response.hits) == 29
