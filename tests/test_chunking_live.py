"""Long documents through the real server, model, LMDB, usearch and edge client: chunked at
ingest, found past the model's maximum with a snippet, re-embedded per changed chunk, deleted
whole, synced to the edge."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from edge_client import EdgeClient
from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import CollectionServiceStub
from server.store import content_hash
from tests._collections import ingest, scifact_docs, search, stub

PARAGRAPHS = 8


def _long(start: int, marker: str) -> tuple[list[str], str]:
    """Paragraphs of one long document (SciFact abstracts, made unseen by ``marker``) and its text."""
    paragraphs = [f"{text} [{marker}]" for _, text, _ in scifact_docs(PARAGRAPHS, skip=start)]
    return paragraphs, "\n\n".join(paragraphs)


def _tail_query(paragraphs: list[str]) -> str:
    """A sentence of the last paragraph: far past the model's 256 tokens."""
    return paragraphs[-1].split(". ")[1]


@pytest.fixture(scope="module")
def corpus(live_server: Any) -> dict[str, Any]:
    """One collection: two long documents, 20 short ones, and the first long one again with
    chunking off (truncated, as before)."""
    marker = uuid.uuid4().hex
    collection = f"chunks-{marker[:8]}"
    para_a, text_a = _long(0, marker)
    para_b, text_b = _long(PARAGRAPHS, marker)
    # short: the first 60 words of other abstracts (some whole abstracts pass 256 tokens)
    shorts: list[tuple[str, str, dict[str, Any]]] = [
        (f"short-{i}", " ".join(text.split()[:60]) + f" [{marker}]", {})
        for i, (_, text, _) in enumerate(scifact_docs(20, skip=40))
    ]
    docs = [("long-a", text_a, {"kind": "long"}), ("long-b", text_b, {}), *shorts]
    acks = ingest(live_server.address, collection, docs)
    channel, service = stub(live_server.address)
    with channel:
        request = pb.IngestRequest(collection=collection, id="long-a-cut", text=text_a, chunking=False)
        (cut_ack,) = list(service.Ingest(iter([request]), timeout=120))
    return {
        "collection": collection,
        "acks": acks,
        "cut_ack": cut_ack,
        "para_a": para_a,
        "text_a": text_a,
        "para_b": para_b,
        "marker": marker,
        "shorts": shorts,
    }


def test_acks_count_chunks_and_short_documents_stay_one_vector(corpus: dict[str, Any], spec: Any) -> None:
    acks = corpus["acks"]
    assert not any(a.HasField("error") for a in acks)
    long_a = acks[0]
    # chunks of other tests' long SciFact abstracts may already be stored: chunks are cut by
    # content, so the same words give the same chunks in any document
    assert long_a.chunks_embedded + long_a.chunks_cached > PARAGRAPHS
    assert long_a.chunks_embedded >= PARAGRAPHS and not long_a.cached  # those with the marker
    assert long_a.content_hash == content_hash(spec.fingerprint, "", corpus["text_a"]).hex()
    short = acks[2]
    assert (short.chunks_embedded, short.chunks_cached) == (1, 0)
    # a short document keeps the key it always had: the hash of its whole text
    text = corpus["shorts"][0][1]
    assert short.content_hash == content_hash(spec.fingerprint, "", text).hex()
    cut = corpus["cut_ack"]
    assert (cut.chunks_embedded, cut.chunks_cached) == (1, 0)  # truncated: one vector
    assert cut.content_hash == content_hash(spec.fingerprint, "", corpus["text_a"]).hex()


def test_reingest_of_an_edited_paragraph_embeds_only_its_chunks(
    live_server: Any, corpus: dict[str, Any]
) -> None:
    collection, paragraphs = corpus["collection"], list(corpus["para_a"])
    first = corpus["acks"][0]
    again = ingest(live_server.address, collection, [("long-a", corpus["text_a"], {"kind": "long"})])[0]
    assert again.cached and again.chunks_embedded == 0
    assert again.chunks_cached == first.chunks_embedded + first.chunks_cached
    assert again.sequence == first.sequence
    paragraphs[4] = paragraphs[4].replace(". ", ". An edit added this sentence about zebrafish fins. ", 1)
    edited = ingest(live_server.address, f"{collection}-edit", [("long-a", "\n\n".join(paragraphs), {})])[0]
    assert 1 <= edited.chunks_embedded <= 2
    assert edited.chunks_cached >= first.chunks_embedded + first.chunks_cached - 2
    hit = search(live_server.address, f"{collection}-edit", "zebrafish fins edit", k=1).hits[0]
    assert hit.id == "long-a" and "zebrafish fins" in hit.snippet


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"exact": True},
        {"precision": pb.PRECISION_INT8},
        {"precision": pb.PRECISION_UBINARY},
        {"dimensions": 256},
    ],
    ids=["ann", "exact", "int8", "ubinary", "dims256"],
)
def test_search_finds_text_past_the_model_limit_with_its_snippet(
    live_server: Any, corpus: dict[str, Any], options: dict[str, Any]
) -> None:
    query = _tail_query(corpus["para_a"])
    hits = search(live_server.address, corpus["collection"], query, k=5, **options).hits
    ids = [h.id for h in hits]
    assert ids[0] == "long-a"  # found by a chunk far past the first 256 tokens
    assert len(ids) == len(set(ids)) == 5  # k documents, each once
    top = hits[0]
    assert top.text == corpus["text_a"] and top.snippet == top.text[top.snippet_start : top.snippet_stop]
    at = corpus["text_a"].index(query)
    assert top.snippet_start < at + len(query) and top.snippet_stop > at  # the chunk holds (part of) it
    assert top.snippet_start > len(corpus["text_a"]) // 2
    assert dict(top.metadata) == {"kind": "long"}
    # the truncated copy only saw the first paragraphs: it ranks below (or outside the top 5)
    cut = next((h for h in hits if h.id == "long-a-cut"), None)
    assert cut is None or cut.score < top.score - 0.2
    short = next(h for h in hits if h.id.startswith("short-") or h.id == "long-a-cut")
    assert short.snippet == "" and (short.snippet_start, short.snippet_stop) == (0, len(short.text))


def test_k_larger_than_the_collection_returns_every_document_once(
    live_server: Any, corpus: dict[str, Any]
) -> None:
    for options in ({}, {"exact": True}):
        hits = search(live_server.address, corpus["collection"], "cells", k=100, **options).hits
        assert sorted(h.id for h in hits) == sorted(
            ["long-a", "long-b", "long-a-cut", *(doc_id for doc_id, _, _ in corpus["shorts"])]
        )


def _edge_sync(address: str, home: Path, collection: str) -> EdgeClient:
    client = EdgeClient(home, server=address)
    client.init()
    client.sync(collection)
    return client


@pytest.fixture(scope="module")
def edge(
    live_server: Any, corpus: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EdgeClient]:
    client = _edge_sync(live_server.address, tmp_path_factory.mktemp("edge-chunks"), corpus["collection"])
    yield client
    client.close()


def test_edge_answers_with_documents_and_snippets_from_chunk_vectors(
    edge: EdgeClient, corpus: dict[str, Any]
) -> None:
    collection = corpus["collection"]
    index = edge.index(collection)
    assert len(index) == 23  # documents, old single-vector ones among them
    assert len(index.index) > 23  # and a vector per chunk
    query = corpus["para_b"][-1].split(". ")[0]  # the last paragraph's title and first sentence
    hits = edge.search_local(query, collection=collection, k=5)
    assert hits[0].id == "long-b"
    at = hits[0].text.index(query)
    assert hits[0].snippet_start < at + len(query) and hits[0].snippet_stop > at  # holds (part of) it
    assert hits[0].snippet == hits[0].text[hits[0].snippet_start : hits[0].snippet_stop]
    assert len({h.id for h in hits}) == 5
    server = edge.search_server(query, collection=collection, k=1)[0]
    assert (server.id, server.snippet_start, server.snippet_stop) == (
        "long-b", hits[0].snippet_start, hits[0].snippet_stop
    )  # fmt: skip
    # a short document: found by its own text, whole
    doc_id, text, _ = corpus["shorts"][3]
    short = edge.search_local(text, collection=collection, k=1)[0]
    assert short.id == doc_id and short.snippet == "" and short.snippet_stop == len(text)


def test_delete_removes_every_chunk_on_server_and_edge(
    live_server: Any, corpus: dict[str, Any], edge: EdgeClient
) -> None:
    collection = corpus["collection"]
    query = _tail_query(corpus["para_b"])
    before = len(edge.index(collection).index)
    with grpc.insecure_channel(live_server.address) as channel:
        reply = CollectionServiceStub(channel).Delete(
            pb.DeleteRequest(collection=collection, ids=["long-b"]), timeout=60
        )
    assert reply.deleted == 1
    for options in ({}, {"exact": True}, {"precision": pb.PRECISION_INT8}):
        hits = search(live_server.address, collection, query, k=30, **options).hits
        assert "long-b" not in {h.id for h in hits} and len(hits) == 22
    report = edge.sync(collection)
    assert report.deletes == 1 and report.documents == 22
    index = edge.index(collection)
    assert len(index.index) < before - PARAGRAPHS  # its chunk vectors left the local index
    assert "long-b" not in {h.id for h in edge.search_local(query, collection=collection, k=30)}


def _unit(vector: pb.Vector) -> Any:
    import numpy as np

    values = np.frombuffer(vector.data, dtype="<f4")
    return values / np.linalg.norm(values)


def test_embed_returns_a_vector_per_chunk_with_its_span(live_server: Any, corpus: dict[str, Any]) -> None:
    from protos.embedding.v1.embedding_pb2_grpc import EmbeddingServiceStub

    long_text, short_text = corpus["text_a"], corpus["shorts"][0][1]
    with grpc.insecure_channel(live_server.address) as channel:
        service = EmbeddingServiceStub(channel)
        reply = service.Embed(
            pb.EmbedRequest(inputs=[short_text, long_text], options=pb.EmbedOptions(chunking=True)),
            timeout=120,
        )
        assert len(reply.embeddings) == 0 and len(reply.chunked) == 2
        short, long = reply.chunked
        assert [(c.start, c.stop) for c in short.chunks] == [(0, len(short_text))]
        plain = service.Embed(pb.EmbedRequest(inputs=[short_text]), timeout=60).embeddings[0]
        assert float(_unit(short.chunks[0].embedding) @ _unit(plain)) > 0.999  # a short input: as before
        stored = corpus["acks"][0]
        assert len(long.chunks) == stored.chunks_embedded + stored.chunks_cached  # as Ingest cut it
        pieces = [long_text[c.start : c.stop] for c in long.chunks]
        alone = service.Embed(pb.EmbedRequest(inputs=pieces[-2:]), timeout=60).embeddings
        for chunk, vector in zip(long.chunks[-2:], alone, strict=True):
            assert float(_unit(chunk.embedding) @ _unit(vector)) > 0.999
        # a stream: the option sticks to later items, one response per input
        items = [
            pb.EmbedStreamRequest(id="a", input=long_text, options=pb.EmbedOptions(chunking=True)),
            pb.EmbedStreamRequest(id="b", input=short_text),
        ]
        responses = list(service.EmbedStream(iter(items), timeout=120))
    assert [r.WhichOneof("result") for r in responses] == ["chunks", "chunks"]
    assert [(c.start, c.stop) for c in responses[0].chunks.chunks] == [(c.start, c.stop) for c in long.chunks]
    assert len(responses[1].chunks.chunks) == 1


def test_a_document_past_chunk_max_chars_embeds_its_beginning_and_says_so(live_server: Any) -> None:
    """--chunk-max-chars (65,536 by default) bounds one document's chunks: the text past it is
    stored, not embedded, and the ack counts those characters; Embed's chunking refuses it."""
    from protos.embedding.v1.embedding_pb2_grpc import EmbeddingServiceStub
    from server.settings import Settings

    limit = Settings().chunk_max_chars
    marker = uuid.uuid4().hex
    abstracts = [f"{text} [{marker}]" for _, text, _ in scifact_docs(200)]
    text = ""
    while len(text) <= limit + 2000:
        text += abstracts[len(text) % len(abstracts)] + "\n\n"
    collection = f"cut-{marker[:8]}"
    (ack,) = ingest(live_server.address, collection, [("big", text, {})])
    assert not ack.HasField("error")
    # cut at the last whitespace before the limit: less than a word short of it
    assert len(text) - limit <= ack.unembedded_chars < len(text) - limit + 100, ack
    assert ack.chunks_embedded + ack.chunks_cached > 1
    channel = grpc.insecure_channel(live_server.address, options=[("grpc.max_send_message_length", 8 << 20)])
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            EmbeddingServiceStub(channel).Embed(
                pb.EmbedRequest(inputs=[text], options=pb.EmbedOptions(chunking=True)), timeout=60
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "inputs[0]" in str(info.value.details()) and "--chunk-max-chars" in str(info.value.details())
