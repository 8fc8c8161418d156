"""Search (approximate index, real server and model) over a collection full of duplicate texts:
4,000 documents cycling over 40 SciFact texts plus 100 unique ones. Identical texts share one
vector; while each was its own point of the graph, unique documents stopped finding themselves
(1 of 100 at 1,500 documents, 127-146 of 200 at 6,000)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from protos.embedding.v1 import embedding_pb2 as pb
from tests._collections import ingest, ranked, scifact_docs, search, stub

COPIES, DUPLICATED, UNIQUE = 4000, 40, 100
COLLECTION = f"duplicates-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def corpus(live_server: Any) -> tuple[list[str], list[str]]:
    texts = [text for _, text, _ in scifact_docs(DUPLICATED + UNIQUE, skip=260)]
    duplicated, unique = texts[:DUPLICATED], texts[DUPLICATED:]
    docs = [(f"dup-{i}", duplicated[i % DUPLICATED], {"i": i}) for i in range(COPIES)]
    docs += [(f"uniq-{j}", text, {}) for j, text in enumerate(unique)]
    acks = ingest(live_server.address, COLLECTION, docs)
    assert not any(a.HasField("error") for a in acks) and len(acks) == COPIES + UNIQUE
    return duplicated, unique


def _ids(address: str, text: str, k: int, **options: Any) -> list[str]:
    return ranked(search(address, COLLECTION, text, k=k, prompt_name="", **options))


def test_unique_documents_find_themselves_among_many_duplicates(live_server: Any, corpus: Any) -> None:
    _duplicated, unique = corpus
    missed = [j for j, text in enumerate(unique) if _ids(live_server.address, text, 1) != [f"uniq-{j}"]]
    assert missed == []


def test_every_document_sharing_a_text_comes_back_best_first(live_server: Any, corpus: Any) -> None:
    duplicated, _unique = corpus
    members = {f"dup-{i}" for i in range(0, COPIES, DUPLICATED)}  # 100 documents carry text 0
    k = len(members) + 12
    response = search(live_server.address, COLLECTION, duplicated[0], k=k, prompt_name="")
    ids, scores = ranked(response), [h.score for h in response.hits]
    assert len(ids) == k == len(set(ids))
    assert set(ids[: len(members)]) == members
    assert scores == sorted(scores, reverse=True) and min(scores[: len(members)]) > 0.99
    assert scores[len(members)] < 0.99  # then the nearest other texts
    exact = search(live_server.address, COLLECTION, duplicated[0], k=k, prompt_name="", exact=True)
    assert set(ranked(exact)[: len(members)]) == members
    assert [h.text for h in exact.hits] == [h.text for h in response.hits]  # ties may pick others
    # fewer than a group: the first documents of it, in the order they were created
    assert _ids(live_server.address, duplicated[0], 3) == ["dup-0", "dup-40", "dup-80"]
    assert (
        search(live_server.address, COLLECTION, duplicated[0], k=1, prompt_name="").hits[0].metadata["i"] == 0
    )


def test_deletes_and_updates_move_documents_between_shared_vectors(live_server: Any, corpus: Any) -> None:
    duplicated, unique = corpus
    group = [f"dup-{i}" for i in range(1, COPIES, DUPLICATED)]  # text 1
    gone = [f"dup-{i}" for i in range(2, COPIES, DUPLICATED)]  # text 2
    channel, service = stub(live_server.address)
    with channel:
        service.Delete(pb.DeleteRequest(collection=COLLECTION, ids=group[2:] + gone), timeout=60)
    ingest(live_server.address, COLLECTION, [("uniq-0", duplicated[1], {})])  # now carries text 1
    assert set(_ids(live_server.address, duplicated[1], 3)) == {*group[:2], "uniq-0"}
    assert "uniq-0" not in _ids(live_server.address, unique[0], 5)
    assert not set(gone) & set(_ids(live_server.address, duplicated[2], 50))
    for j in (1, 50, 99):
        assert _ids(live_server.address, unique[j], 1) == [f"uniq-{j}"]
