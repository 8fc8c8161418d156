"""LEXICAL (BM25) and HYBRID search through the real server, model and LMDB store, on SciFact
documents: a rare word only BM25 finds, deletes and updates never leaking old text, RRF and
weighted fusion against a hand computation, the lexical index rebuilt after a restart, and
INVALID_ARGUMENT for parameters that do not go together.

The lexical index gains documents through a background rebuild: tests wait (with a deadline)
for SearchResponse.sequence to reach an ack's sequence, never for a fixed time."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from protos.embedding.v1 import embedding_pb2 as pb
from server import fusion
from tests._collections import ingest, ranked, scifact_docs, scifact_queries, search, stub
from tests.server_harness import running_server

COLLECTION = "hybrid-scifact"
N = 60
DEADLINE_S = 60.0
LEXICAL = pb.SEARCH_MODE_LEXICAL
HYBRID = pb.SEARCH_MODE_HYBRID
RARE = "Quokkafield"
RARE_DOC = "rare-word-doc"


def _searchable(address: str, collection: str, sequence: int) -> pb.SearchResponse:
    """Wait until LEXICAL search reflects ``sequence``; the last response."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        response = search(address, collection, "a", k=1, mode=LEXICAL)
        if response.sequence >= sequence:
            return response
        assert time.monotonic() < deadline, f"lexical index not at sequence {sequence} in {DEADLINE_S} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def corpus(live_server):  # type: ignore[no-untyped-def]
    docs = scifact_docs(N)
    # One abstract carries a made-up name once, in a sentence about something else.
    _, text, _ = scifact_docs(1, skip=N)[0]
    docs.append((RARE_DOC, f"{text} Participants were recruited by the {RARE} consortium.", {}))
    acks = ingest(live_server.address, COLLECTION, docs)
    assert not any(a.HasField("error") for a in acks)
    _searchable(live_server.address, COLLECTION, max(a.sequence for a in acks))
    return docs


def test_lexical_finds_a_rare_word_that_dense_misses(live_server, corpus) -> None:  # type: ignore[no-untyped-def]
    lexical = search(live_server.address, COLLECTION, RARE, k=10, mode=LEXICAL)
    assert ranked(lexical) == [RARE_DOC]  # only that document has the word
    hit = lexical.hits[0]
    assert hit.score > 0 and hit.text == corpus[-1][1]
    assert (hit.snippet_start, hit.snippet_stop, hit.snippet) == (0, len(hit.text), "")
    # The embedding of a made-up word is near no document's: dense puts another document first,
    # and this one scores like unrelated ones.
    dense = search(live_server.address, COLLECTION, RARE, k=100)
    assert dense.hits[0].id != RARE_DOC
    assert dict(_pairs(dense))[RARE_DOC] < 0.2
    hybrid = search(live_server.address, COLLECTION, RARE, k=10, mode=HYBRID)
    assert ranked(hybrid)[0] == RARE_DOC


def _pairs(response: pb.SearchResponse) -> list[tuple[str, float]]:
    return [(h.id, h.score) for h in response.hits]


def test_rrf_and_weighted_fusion_match_a_hand_computation(live_server, corpus) -> None:  # type: ignore[no-untyped-def]
    for query in scifact_queries(5):
        # each side's candidate list is max(k, 100) deep: all N + 1 documents here
        dense = _pairs(search(live_server.address, COLLECTION, query, k=100, include_text=False))
        lexical = _pairs(
            search(live_server.address, COLLECTION, query, k=100, include_text=False, mode=LEXICAL)
        )
        assert lexical, query
        by_rank: dict[str, float] = {}
        for ranking in (dense, lexical):
            for rank, (doc_id, _) in enumerate(ranking, 1):
                by_rank[doc_id] = by_rank.get(doc_id, 0.0) + 1 / (60 + rank)
        expected = sorted(by_rank.items(), key=lambda item: -item[1])[:10]
        got = _pairs(search(live_server.address, COLLECTION, query, k=10, mode=HYBRID, include_text=False))
        assert [i for i, _ in got] == [i for i, _ in expected]
        assert [s for _, s in got] == pytest.approx([s for _, s in expected], rel=1e-5)
        got_k = _pairs(search(live_server.address, COLLECTION, query, k=5, mode=HYBRID, rrf_k=1))
        want_k = fusion.rrf([dense, lexical], k=1)[:5]
        assert [i for i, _ in got_k] == [i for i, _ in want_k]
        assert [s for _, s in got_k] == pytest.approx([s for _, s in want_k], rel=1e-5)

        weighted = _pairs(
            search(
                live_server.address,
                COLLECTION,
                query,
                k=10,
                mode=HYBRID,
                fusion=pb.FUSION_WEIGHTED,
                hybrid_alpha=0.25,
                include_text=False,
            )
        )
        low_d, high_d = min(s for _, s in dense), max(s for _, s in dense)
        low_l, high_l = min(s for _, s in lexical), max(s for _, s in lexical)
        hand = {i: 0.25 * (s - low_d) / (high_d - low_d) for i, s in dense}
        for i, s in lexical:
            hand[i] = hand.get(i, 0.0) + 0.75 * (s - low_l) / (high_l - low_l)
        assert [s for _, s in weighted] == pytest.approx(sorted(hand.values(), reverse=True)[:10], abs=1e-5)
        for doc_id, score in weighted:
            assert score == pytest.approx(hand[doc_id], abs=1e-5)


def test_deleted_and_updated_documents_never_leak(live_server, corpus) -> None:  # type: ignore[no-untyped-def]
    address = live_server.address
    old = "Pangolin scales carry a keratin lattice studied by the Harrowgate group."
    new = "Axolotl limb regeneration depends on the Tessellane signalling pathway."
    acks = ingest(
        address, COLLECTION, [("mutable", old, {}), ("doomed", old.replace("Pangolin", "Marmoset"), {})]
    )
    _searchable(address, COLLECTION, max(a.sequence for a in acks))
    assert "mutable" in ranked(search(address, COLLECTION, "Harrowgate pangolin", mode=LEXICAL))
    assert ranked(search(address, COLLECTION, "marmoset", mode=LEXICAL)) == ["doomed"]

    channel, service = stub(address)
    with channel:
        service.Delete(pb.DeleteRequest(collection=COLLECTION, ids=["doomed"]), timeout=60)
    [updated] = ingest(address, COLLECTION, [("mutable", new, {})])
    # At once, with no wait: the deleted one is gone and the old words find nothing.
    for query in ("marmoset", "Harrowgate pangolin keratin"):
        for options in ({"mode": LEXICAL}, {"mode": HYBRID}, {"mode": HYBRID, "fusion": pb.FUSION_WEIGHTED}):
            found = ranked(search(address, COLLECTION, query, k=100, **options))
            assert "doomed" not in found, (query, options)
            if options["mode"] == LEXICAL:
                assert "mutable" not in found, (query, options)
    _searchable(address, COLLECTION, updated.sequence)
    hits = search(address, COLLECTION, "Tessellane axolotl", k=3, mode=LEXICAL).hits
    assert hits[0].id == "mutable" and hits[0].text == new
    assert "mutable" not in ranked(
        search(address, COLLECTION, "Harrowgate pangolin keratin", k=100, mode=LEXICAL)
    )
    assert "doomed" not in ranked(search(address, COLLECTION, "marmoset", k=100, mode=HYBRID))


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"fusion": pb.FUSION_RRF}, "fusion applies to mode HYBRID"),
        ({"mode": LEXICAL, "fusion": pb.FUSION_WEIGHTED}, "fusion applies to mode HYBRID"),
        ({"mode": HYBRID, "hybrid_alpha": 0.5}, "hybrid_alpha applies to mode HYBRID with fusion WEIGHTED"),
        ({"mode": HYBRID, "fusion": pb.FUSION_WEIGHTED, "hybrid_alpha": 1.5}, "between 0 and 1"),
        ({"mode": HYBRID, "fusion": pb.FUSION_WEIGHTED, "hybrid_alpha": -0.1}, "between 0 and 1"),
        ({"mode": HYBRID, "fusion": pb.FUSION_WEIGHTED, "hybrid_alpha": float("nan")}, "between 0 and 1"),
        (
            {"mode": HYBRID, "fusion": pb.FUSION_WEIGHTED, "rrf_k": 10},
            "rrf_k applies to mode HYBRID with fusion RRF",
        ),
        ({"rrf_k": 10}, "rrf_k applies"),
        ({"mode": HYBRID, "rrf_k": 0}, "rrf_k must be between 1 and 1000"),
        ({"mode": HYBRID, "rrf_k": 1001}, "rrf_k must be between 1 and 1000"),
        ({"mode": LEXICAL, "exact": True}, "exact shapes the dense ranking"),
        ({"mode": LEXICAL, "dimensions": 64}, "dimensions shapes the dense ranking"),
        ({"mode": LEXICAL, "precision": pb.PRECISION_INT8}, "precision shapes the dense ranking"),
        ({"mode": LEXICAL, "rescore_multiplier": 8}, "rescore_multiplier shapes the dense ranking"),
        ({"mode": LEXICAL, "prompt_name": ""}, "prompt_name shapes the dense ranking"),
        ({"mode": 9}, "mode 9 is unknown"),
        ({"mode": HYBRID, "fusion": 7}, "fusion 7 is unknown"),
    ],
)
def test_invalid_combinations_are_invalid_argument(  # type: ignore[no-untyped-def]
    live_server, corpus, options: dict[str, Any], words: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        search(live_server.address, COLLECTION, "aspirin", **options)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in caught.value.details()


def test_the_lexical_index_is_rebuilt_after_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    docs = scifact_docs(20, skip=100)
    queries = [*scifact_queries(3), "vitamin", "cancer risk"]

    def answers(address: str) -> list[list[tuple[str, float]]]:
        return [_pairs(search(address, "restart", q, k=5, mode=LEXICAL, include_text=False)) for q in queries]

    with running_server(data) as server:
        acks = ingest(server.address, "restart", docs)
        _searchable(server.address, "restart", max(a.sequence for a in acks))
        before = answers(server.address)
        assert any(before)
        assert server.stop() == 0
    shutil.rmtree(data / "indexes" / "lexical")  # gone: rebuilt from the store at start
    with running_server(data) as server:
        response = search(server.address, "restart", "a", k=1, mode=LEXICAL)
        assert response.sequence == max(a.sequence for a in acks)  # complete before SERVING
        assert answers(server.address) == before
        assert "lexical index 'restart' missing or stale: building it from the store" in server.log()
    # saved at that build (loading a saved index: tests/test_lexical_index.py)
    assert list((data / "indexes" / "lexical").glob("*.json"))
