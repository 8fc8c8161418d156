"""Responses stay under the message limit whatever the documents hold, and a document too large
for one gets through or gets its own error (a server with a 1 MiB limit keeps the data small).

Before, 200 documents of ~100 KB made every SyncVectors retry fail with "RESOURCE_EXHAUSTED:
Sent message larger than max", so the collection could never be synced, and Search with k=200
failed the same way; one document over the limit ended its whole Ingest stream.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from edge_client import EdgeClient
from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import EmbeddingServiceStub
from tests._collections import ingest, requests, scifact_docs, search, stub
from tests.server_harness import ServerProcess, running_server

MIB = 1 << 20
DOCUMENT_LIMIT = 2 * MIB
ARGS = ("--backend", "onnx", "--workers", "1", "--max-message-bytes", str(MIB))
ARGS_DOCS = ("--max-document-bytes", str(DOCUMENT_LIMIT))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("limits") / "data", *ARGS, *ARGS_DOCS) as process:
        yield process


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [text for _, text, _ in scifact_docs(32, skip=368)]


def _long(text: str, chars: int) -> str:
    """A real text repeated to ``chars`` characters, with multi-byte characters to cut around."""
    base = text + " Ünïcødé 🚀 "
    return (base * (chars // len(base) + 1))[:chars]


def _sync(address: str, collection: str) -> list[pb.SyncVectorsResponse]:
    with grpc.insecure_channel(address) as channel:
        fingerprint = EmbeddingServiceStub(channel).Info(pb.InfoRequest(), timeout=60).edge_bundle_fingerprint
    channel, service = stub(address)
    with channel:
        request = pb.SyncVectorsRequest(collection=collection, bundle_fingerprint=fingerprint)
        return list(service.SyncVectors(request, timeout=300))


def _cut_right(hit: Any, full: str) -> None:
    assert full.startswith(hit.text)  # cut on a character, never inside one
    assert hit.text_truncated is (hit.text != full)


def test_many_large_documents_sync_and_search_in_messages_under_the_limit(
    server: ServerProcess, texts: list[str]
) -> None:
    collection = f"large-{uuid.uuid4().hex[:8]}"
    docs = {f"big-{i}": _long(texts[i], 100_000) for i in range(30)}  # ~3.3 MB in all
    acks = ingest(server.address, collection, [(i, t, {"i": n}) for n, (i, t) in enumerate(docs.items())])
    assert not any(a.HasField("error") for a in acks)
    messages = _sync(server.address, collection)
    assert len(messages) > 3 and all(m.ByteSize() <= MIB for m in messages)
    changes = [c for m in messages for c in m.changes]
    assert [c.id for c in changes] == list(docs)
    assert all(c.text == docs[c.id] and not c.text_truncated for c in changes)  # each fits alone
    response = search(server.address, collection, docs["big-7"][:300], k=30, prompt_name="")
    assert response.ByteSize() <= MIB and len(response.hits) == 30  # every hit, texts cut
    assert response.hits[0].id == "big-7" and not response.hits[0].text_truncated
    for hit in response.hits:
        _cut_right(hit, docs[hit.id])
        assert hit.metadata["i"] == list(docs).index(hit.id) and not hit.metadata_omitted
    assert 0 < sum(h.text_truncated for h in response.hits) < 30


def test_a_document_larger_than_a_message_is_stored_and_sent_cut(
    server: ServerProcess, texts: list[str], tmp_path: Path
) -> None:
    collection = f"huge-{uuid.uuid4().hex[:8]}"
    huge = _long(texts[31], 1_500_000)
    assert MIB < len(huge.encode()) < DOCUMENT_LIMIT
    acks = ingest(server.address, collection, [("huge", huge, {}), ("small", "A small note on bees.", {})])
    assert not any(a.HasField("error") for a in acks)
    hits = {h.id: h for h in search(server.address, collection, huge[:300], k=2, prompt_name="").hits}
    assert hits["huge"].text_truncated and len(hits["huge"].text.encode()) < MIB
    _cut_right(hits["huge"], huge)
    _cut_right(hits["small"], "A small note on bees.")
    changes = {c.id: c for m in _sync(server.address, collection) for c in m.changes}
    assert changes["huge"].text_truncated and len(changes["huge"].text) > MIB // 2
    _cut_right(changes["huge"], huge)
    assert changes["small"].text == "A small note on bees." and not changes["small"].text_truncated
    with EdgeClient(tmp_path, server=server.address) as client:
        client.init()  # the bundle, too, comes in chunks under the limit
        assert client.sync(collection).documents == 2
        local = {h.id: h for h in client.search_local(huge[:300], collection=collection, k=2)}
        assert local["huge"].text_truncated and huge.startswith(local["huge"].text)
        assert not local["small"].text_truncated


def test_a_document_over_the_document_limit_gets_its_own_error(server: ServerProcess) -> None:
    collection = f"over-{uuid.uuid4().hex[:8]}"
    docs: list[tuple[str, str, dict[str, Any]]] = [
        ("a", "First note.", {}),
        ("over", "x" * (DOCUMENT_LIMIT + 1), {}),
    ]
    docs.append(("b", "Second note.", {}))
    acks = ingest(server.address, collection, docs)
    assert [a.id for a in acks] == ["a", "over", "b"]
    assert not acks[0].HasField("error") and not acks[2].HasField("error")  # the stream went on
    error = acks[1].error
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and error.field == "text"
    assert f"{DOCUMENT_LIMIT + 1:,}" in error.message and f"{DOCUMENT_LIMIT:,}" in error.message
    assert "--max-document-bytes" in error.message
    assert {h.id for h in search(server.address, collection, "note", k=5).hits} == {"a", "b"}
    # a message too large even to arrive (over 4x the document limit) ends that stream only
    channel, service = stub(server.address)
    with channel, pytest.raises(grpc.RpcError) as caught:
        list(
            service.Ingest(
                iter(requests(collection, [("far-over", "y" * (5 * DOCUMENT_LIMIT), {})])), timeout=120
            )
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [a.id for a in ingest(server.address, collection, [("c", "Third note.", {})])] == ["c"]
