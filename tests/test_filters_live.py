"""Metadata filters, search by vector, SearchBatch and collection management through the real
server (shared session server: real model, real LMDB), on the fixture SciFact documents with
seeded synthetic metadata.

Filters are checked against a brute-force oracle written here independently of
embedcore.filters: each random filter is generated together with a plain Python predicate, and
the oracle keeps the documents the predicate keeps from the unfiltered exact ranking of every
document. Every filtered result must be the oracle's, in order: exact search, the approximate
index when the filter keeps at most the server's --search-filter-exact-max documents, the int8
and binary first passes (rescoring every kept document), Matryoshka dimensions, LEXICAL and
HYBRID. The edge client's local filter keeps the same documents as the server's.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.json_format import MessageToDict

from edge_client import CollectionNotFound, EdgeClient, InvalidInput, cli
from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import EmbeddingServiceStub
from server import cli as server_cli
from server import fusion
from tests._collections import (
    LIVE_FILTER_EXACT_MAX,
    ingest,
    ranked,
    scifact_docs,
    scifact_queries,
    search,
    stub,
)

COLLECTION = "filters-scifact"
N = 300
K = 10
LEXICAL = pb.SEARCH_MODE_LEXICAL
HYBRID = pb.SEARCH_MODE_HYBRID
SOURCES = ["pubmed", "arxiv", "biorxiv", "journal"]
TAGS = ["a", "b", "c", "d", "e", "f"]
Predicate = Callable[[dict[str, Any]], bool]


def _metadata(i: int, title: str, rng: random.Random) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "title": title,
        "n": i,
        "year": rng.randint(1990, 2020),
        "source": rng.choice(SOURCES),
        "tags": rng.sample(TAGS, rng.randint(0, 3)),
        "open": rng.random() < 0.5,
    }
    if rng.random() < 0.7:
        moment = datetime(2000, 1, 1, tzinfo=UTC).timestamp() + rng.random() * 20 * 365 * 86400
        when = datetime.fromtimestamp(moment, UTC)
        meta["published"] = rng.choice(
            [
                when.strftime("%Y-%m-%dT%H:%M:%S"),  # naive: UTC
                when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                when.astimezone().strftime("%Y-%m-%dT%H:%M:%S%z"),
                when.strftime("%Y-%m-%d"),
            ]
        )
    if rng.random() < 0.3:
        meta["lab"] = {"name": rng.choice(["x", "y", "z"])}
    return meta


def _instant(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- random filters, each with its predicate --------------------------------------------------


def _leaf(rng: random.Random) -> tuple[dict[str, Any], Predicate]:
    kind = rng.randrange(9)
    if kind == 0:
        s = rng.choice(SOURCES)
        return {"source": s}, lambda m: m.get("source") == s
    if kind == 1:
        years = rng.sample(range(1990, 2021), rng.randint(1, 5))
        return {"year": {"in": years}}, lambda m: m.get("year") in years
    if kind == 2:
        low = rng.randint(1990, 2018)
        high = rng.randint(low + 1, 2021)
        return {"year": {"gte": low, "lt": high}}, lambda m: low <= m["year"] < high
    if kind == 3:
        t = rng.choice(TAGS)
        return {"tags": t}, lambda m: t in m.get("tags", [])
    if kind == 4:
        e = rng.random() < 0.5
        return {"lab": {"exists": e}}, lambda m: ("lab" in m) == e
    if kind == 5:
        x = rng.choice(["x", "y", "z"])
        return {"lab.name": x}, lambda m: m.get("lab", {}).get("name") == x
    if kind == 6:
        bound = f"{rng.randint(2000, 2019)}-{rng.randint(1, 12):02d}-15T12:00:00+05:00"
        op = rng.choice(["gte", "lt"])

        def dated(m: dict[str, Any]) -> bool:
            if "published" not in m:
                return False
            here, there = _instant(m["published"]), _instant(bound)
            return here >= there if op == "gte" else here < there

        return {"published": {op: bound}}, dated
    if kind == 7:
        picks = rng.sample(range(N), rng.randint(1, 3))  # about 0.3-1% of the documents
        return {"n": {"in": picks}}, lambda m: m["n"] in picks
    b = rng.random() < 0.5
    return {"open": b}, lambda m: m["open"] is b


def _random_filter(rng: random.Random, depth: int = 0) -> tuple[dict[str, Any], Predicate]:
    kind = rng.randrange(5) if depth < 2 else 0
    if kind <= 1:
        return _leaf(rng)
    if kind == 4:
        inner, pred = _random_filter(rng, depth + 1)
        return {"not": inner}, lambda m: not pred(m)
    parts = [_random_filter(rng, depth + 1) for _ in range(rng.randint(2, 3))]
    specs = [s for s, _ in parts]
    preds = [p for _, p in parts]
    if kind == 2:
        return {"and": specs}, lambda m: all(p(m) for p in preds)
    return {"or": specs}, lambda m: any(p(m) for p in preds)


def _filters() -> list[tuple[str, Predicate]]:
    rng = random.Random(15)
    out = [_random_filter(rng) for _ in range(14)]
    out += [
        ({"n": 7}, lambda m: m["n"] == 7),  # one document: 0.3%
        ({"source": "none of them"}, lambda m: False),
        ({"n": {"gte": 0}}, lambda m: True),
        ({"source": "pubmed", "year": {"lt": 2005}}, lambda m: m["source"] == "pubmed" and m["year"] < 2005),
    ]
    return [(json.dumps(spec), pred) for spec, pred in out]


# -- the corpus --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(live_server: Any) -> dict[str, dict[str, Any]]:
    rng = random.Random(2015)
    docs = [
        (doc_id, text, _metadata(i, meta.get("title", ""), rng))
        for i, (doc_id, text, meta) in enumerate(scifact_docs(N))
    ]
    acks = ingest(live_server.address, COLLECTION, docs)
    assert not any(a.HasField("error") for a in acks)
    head = max(a.sequence for a in acks)
    deadline = time.monotonic() + 60
    while search(live_server.address, COLLECTION, "a", k=1, mode=LEXICAL).sequence < head:
        assert time.monotonic() < deadline, "the lexical index did not catch up in 60 s"
        time.sleep(0.05)
    return {doc_id: meta for doc_id, _, meta in docs}


def _pairs(response: pb.SearchResponse) -> list[tuple[str, float]]:
    return [(h.id, h.score) for h in response.hits]


def _kept(ranking: list[str], pred: Predicate, corpus: dict[str, dict[str, Any]]) -> list[str]:
    return [doc_id for doc_id in ranking if pred(corpus[doc_id])]


def test_filtered_search_returns_the_oracles_documents_in_order(
    live_server: Any, corpus: dict[str, Any]
) -> None:
    address = live_server.address
    filters = _filters()
    selective = broad = 0
    recall_hits = recall_total = 0
    for query in scifact_queries(3):
        every = ranked(search(address, COLLECTION, query, k=N, exact=True, include_text=False))
        every_128 = ranked(search(address, COLLECTION, query, k=N, dimensions=128, include_text=False))
        dense_all = _pairs(search(address, COLLECTION, query, k=N, exact=True, include_text=False))
        lexical_all = _pairs(search(address, COLLECTION, query, k=N, mode=LEXICAL, include_text=False))
        assert len(every) == N
        for text, pred in filters:
            want = _kept(every, pred, corpus)
            kept = len(want)
            got = search(address, COLLECTION, query, k=K, exact=True, filter=text)
            assert ranked(got) == want[:K], text
            for hit in got.hits:  # hits carry the document's metadata
                assert pred(MessageToDict(hit.metadata) | {"n": corpus[hit.id]["n"]})
            approx = ranked(search(address, COLLECTION, query, k=K, filter=text, include_text=False))
            if kept <= LIVE_FILTER_EXACT_MAX:
                selective += 1
                assert approx == want[:K], text  # exact over the kept documents
            else:
                broad += 1
                assert len(approx) == K and all(pred(corpus[i]) for i in approx), text
                recall_hits += len(set(approx) & set(want[:K]))
                recall_total += K
            for precision in (pb.PRECISION_INT8, pb.PRECISION_UBINARY):
                quantized = search(
                    address,
                    COLLECTION,
                    query,
                    k=K,
                    precision=precision,
                    rescore_multiplier=100,
                    filter=text,
                    include_text=False,
                )
                assert ranked(quantized) == want[:K], (text, precision)
            dims = search(address, COLLECTION, query, k=K, dimensions=128, filter=text, include_text=False)
            assert ranked(dims) == _kept(every_128, pred, corpus)[:K], text
            lexical = search(address, COLLECTION, query, k=K, mode=LEXICAL, filter=text, include_text=False)
            lexical_want = [(i, s) for i, s in lexical_all if pred(corpus[i])]
            assert ranked(lexical) == [i for i, _ in lexical_want[:K]], text
            hybrid = search(
                address, COLLECTION, query, k=K, mode=HYBRID, exact=True, filter=text, include_text=False
            )
            dense_want = [(i, s) for i, s in dense_all if pred(corpus[i])]
            fused = fusion.rrf([dense_want[: fusion.CANDIDATES], lexical_want[: fusion.CANDIDATES]], 60)
            assert ranked(hybrid) == [i for i, _ in fused[:K]], text
    assert selective >= 6 and broad >= 6  # both paths of the approximate search were taken
    assert recall_hits / recall_total >= 0.9  # oversampled index vs exact, filters keeping many


@pytest.mark.parametrize(
    ("spec", "part"),
    [
        ('{"and": [{"year": 2000}, {"year": {"gte": "someday"}}]}', "and[1].year.gte"),
        ('{"or": [{"tags": {"within": ["a"]}}]}', "or[0].tags.within"),
        ('{"year": {"in": []}}', "year.in"),
        ("{not json", "not valid JSON"),
    ],
)
def test_a_malformed_filter_is_invalid_argument_naming_the_part(
    live_server: Any, corpus: dict[str, Any], spec: str, part: str
) -> None:
    for mode in (pb.SEARCH_MODE_DENSE, LEXICAL, HYBRID):
        with pytest.raises(grpc.RpcError) as caught:
            search(live_server.address, COLLECTION, "cancer", k=3, mode=mode, filter=spec)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "filter" in (caught.value.details() or "") and part in (caught.value.details() or "")


def _query_vector(address: str, text: str) -> list[float]:
    with grpc.insecure_channel(address) as channel:
        service = EmbeddingServiceStub(channel)
        info = service.Info(pb.InfoRequest(), timeout=60)
        reply = service.Embed(
            pb.EmbedRequest(inputs=[text], options=pb.EmbedOptions(prompt_name=info.query_prompt_name)),
            timeout=60,
        )
    values: list[float] = np.frombuffer(reply.embeddings[0].data, dtype="<f4").tolist()
    return values


def test_search_by_vector_equals_search_by_its_text(live_server: Any, corpus: dict[str, Any]) -> None:
    address = live_server.address
    for query in scifact_queries(3):
        vector = _query_vector(address, query)
        for options in ({"exact": True}, {}, {"dimensions": 64}, {"filter": '{"open": true}'}):
            by_text = search(address, COLLECTION, query, k=K, **options)
            by_vector = search(address, COLLECTION, "", k=K, vector=vector, **options)
            assert ranked(by_vector) == ranked(by_text), options
            assert [h.score for h in by_vector.hits] == pytest.approx(
                [h.score for h in by_text.hits], abs=1e-5
            )
        # a longer vector in the same direction: normalized, the same hits and scores
        for exact in (True, False):  # brute force, and the index (inner product: scores scale)
            scaled = search(address, COLLECTION, "", k=K, vector=[3 * x for x in vector], exact=exact)
            unit = search(address, COLLECTION, query, k=K, exact=exact)
            assert ranked(scaled) == ranked(unit)
            assert [h.score for h in scaled.hits] == pytest.approx([h.score for h in unit.hits], abs=1e-5)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"vector": [0.1] * 10}, "384 dimensions"),
        ({"vector": [float("nan")] * 384}, "finite"),
        ({"vector": [0.0] * 384}, "zeros"),
        ({"vector": [0.1] * 384, "mode": LEXICAL}, "DENSE"),
    ]
    for options, words in bad:
        with pytest.raises(grpc.RpcError) as caught:
            search(address, COLLECTION, "", k=3, **options)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in (caught.value.details() or ""), caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        search(address, COLLECTION, "both", k=3, vector=[0.1] * 384)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_search_batch_answers_each_request_as_search_does(live_server: Any, corpus: dict[str, Any]) -> None:
    address = live_server.address
    queries = scifact_queries(3)
    requests = [
        pb.SearchRequest(collection=COLLECTION, query=queries[0], k=5, exact=True, filter='{"tags": "a"}'),
        pb.SearchRequest(collection=COLLECTION, query=queries[1], k=3, mode=LEXICAL),
        pb.SearchRequest(collection=COLLECTION, vector=_query_vector(address, queries[2]), k=4, exact=True),
    ]
    channel, service = stub(address)
    with channel:
        batch = service.SearchBatch(pb.SearchBatchRequest(requests=requests), timeout=120)
        assert len(batch.responses) == 3
        for request, response in zip(requests, batch.responses, strict=True):
            alone = service.Search(request, timeout=120)
            assert _pairs(response) == _pairs(alone)
            assert [h.text for h in response.hits] == [h.text for h in alone.hits]
        broken = [requests[0], pb.SearchRequest(collection=COLLECTION, query="q", k=5000)]
        for bad, words in (
            (broken, "requests[1]: k"),
            ([requests[0]] * 65, "1 to 64"),
            ([], "1 to 64"),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                service.SearchBatch(pb.SearchBatchRequest(requests=bad), timeout=120)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert words in (caught.value.details() or ""), caught.value.details()


# -- the edge ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def edge(
    live_server: Any, corpus: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EdgeClient]:
    client = EdgeClient(tmp_path_factory.mktemp("edge-filters"), server=live_server.address, timeout=60)
    client.init()
    assert client.sync(COLLECTION).documents == N
    yield client
    client.close()


def test_edge_filter_keeps_what_the_server_filter_keeps(
    live_server: Any, corpus: dict[str, Any], edge: EdgeClient
) -> None:
    query = scifact_queries(1)[0]
    for text, pred in _filters():
        want = {doc_id for doc_id, meta in corpus.items() if pred(meta)}
        server_hits = search(
            live_server.address, COLLECTION, query, k=N, exact=True, filter=text, include_text=False
        )
        local = edge.search(query, collection=COLLECTION, k=N, mode="local", filter=text).results
        assert {h.id for h in local} == set(ranked(server_hits)) == want, text
        scores = [h.score for h in local]
        assert scores == sorted(scores, reverse=True)
        top = edge.search(query, collection=COLLECTION, k=3, mode="local", filter=text).results
        assert [h.id for h in top] == [h.id for h in local[:3]]
        through = edge.search(query, collection=COLLECTION, k=K, mode="server", filter=text).results
        server_default = search(live_server.address, COLLECTION, query, k=K, filter=text, include_text=False)
        assert [h.id for h in through] == ranked(server_default)
    with pytest.raises(InvalidInput, match=r"and\[0\]\.year\.gte"):
        edge.search(query, collection=COLLECTION, mode="local", filter='{"and": [{"year": {"gte": []}}]}')


def test_edge_cli_search_takes_a_filter(
    corpus: dict[str, Any], edge: EdgeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    query = scifact_queries(1)[0]
    spec = '{"source": "pubmed", "year": {"lt": 2005}}'
    argv = [
        "search",
        query,
        "--collection",
        COLLECTION,
        "--home",
        str(edge.home),
        "--mode",
        "local",
        "--k",
        "5",
    ]
    assert cli.main([*argv, "--json", "--filter", spec]) == 0
    printed = json.loads(capsys.readouterr().out)
    wanted = edge.search(query, collection=COLLECTION, k=5, mode="local", filter=spec).results
    assert [r["id"] for r in printed["results"]] == [h.id for h in wanted] and wanted
    assert all(
        r["metadata"]["source"] == "pubmed" and r["metadata"]["year"] < 2005 for r in printed["results"]
    )
    assert cli.main([*argv, "--filter", '{"year": {"gte": "soon"}}']) == 1
    assert "year.gte" in capsys.readouterr().err
    # embed-server search takes one too
    address = ["--server", edge.server, "--collection", COLLECTION, "--k", "5", "--exact"]
    assert server_cli.main(["search", query, *address, "--json", "--filter", spec]) == 0
    printed = json.loads(capsys.readouterr().out)
    exact = search(edge.server, COLLECTION, query, k=5, exact=True, filter=spec, include_text=False)
    assert [r["id"] for r in printed["results"]] == ranked(exact)


# -- list, get, drop --------------------------------------------------------------------------


def _lexical_files(data_dir: Path, collection: str) -> list[Path]:
    stem = hashlib.sha256(collection.encode()).hexdigest()[:24]
    return list((data_dir / "indexes" / "lexical").glob(f"{stem}*"))


def test_list_get_and_drop_a_collection(live_server: Any, corpus: dict[str, Any], edge: EdgeClient) -> None:
    address = live_server.address
    name = "filters-drop-me"
    docs = [(f"d{i}", text, {"i": i}) for i, (_, text, _) in enumerate(scifact_docs(5, skip=N))]
    acks = ingest(address, name, docs)
    channel, service = stub(address)
    with channel:
        listed = {
            c.name: c for c in service.ListCollections(pb.ListCollectionsRequest(), timeout=60).collections
        }
        row = listed[name]
        assert (row.documents, row.sequence) == (5, max(a.sequence for a in acks))
        assert row.model_fingerprint.startswith("all-MiniLM-L6-v2@") and not row.stale and row.incarnation
        assert row.document_bytes > sum(len(t) for _, t, _ in docs) // 3 and row.vector_bytes >= 5 * 384 * 4
        assert listed[COLLECTION].documents == N
        got = service.GetDocuments(
            pb.GetDocumentsRequest(collection=name, ids=["d3", "nope", "d0"]), timeout=60
        )
        assert [d.id for d in got.documents] == ["d3", "d0"] and list(got.missing) == ["nope"]
        assert got.documents[0].text == docs[3][1] and MessageToDict(got.documents[0].metadata) == {"i": 3}
        assert got.documents[0].content_hash == acks[3].content_hash and got.documents[0].stored_text
        assert got.sequence == row.sequence
        bare = service.GetDocuments(pb.GetDocumentsRequest(collection=name, ids=["d1"], include_text=False))
        assert bare.documents[0].text == "" and bare.documents[0].content_hash == acks[1].content_hash

        assert edge.sync(name).documents == 5
        deadline = time.monotonic() + 60
        while not _lexical_files(live_server.data_dir, name):  # saved after its first build
            search(address, name, "a", k=1, mode=LEXICAL)
            assert time.monotonic() < deadline
            time.sleep(0.05)
        search(address, name, "a", k=1, exact=True)  # caches its matrix at this sequence
        dropped = service.DropCollection(pb.DropCollectionRequest(collection=name), timeout=60)
        assert dropped.documents == 5
        assert name not in {c.name for c in service.ListCollections(pb.ListCollectionsRequest()).collections}
        assert not _lexical_files(live_server.data_dir, name)
        calls: list[tuple[str, Any]] = [
            ("DropCollection", pb.DropCollectionRequest(collection=name)),
            ("GetDocuments", pb.GetDocumentsRequest(collection=name, ids=["d0"])),
            ("Search", pb.SearchRequest(collection=name, query="a")),
        ]
        for method, request in calls:
            with pytest.raises(grpc.RpcError) as caught:
                getattr(service, method)(request, timeout=60)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND, method
        with pytest.raises(CollectionNotFound):
            edge.sync(name)
        index = edge.index(name)
        assert len(index) == 0 and index.get_state("sequence") == "0" and index.get_state("incarnation") == ""

        # Created again under the name, at the same sequence: nothing of the old one is served.
        again: list[tuple[str, str, dict[str, Any]]] = [
            (f"e{i}", text, {}) for i, (_, text, _) in enumerate(scifact_docs(5, skip=N + 5))
        ]
        assert max(a.sequence for a in ingest(address, name, again)) == row.sequence
        for exact in (True, False):
            found = search(address, name, again[0][1], k=10, exact=exact)
            assert sorted(ranked(found)) == [f"e{i}" for i in range(5)]
        assert edge.sync(name).documents == 5
