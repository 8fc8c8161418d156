"""SyncVectors: edge-dimension vectors of the changes after a sequence, resumable, batched."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from embedcore import EdgeBundle
from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import EmbeddingServiceStub
from tests._collections import ingest, scifact_docs, stub

COLLECTION = "sync-scifact"


def _bundle_fingerprint(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        info = EmbeddingServiceStub(channel).Info(pb.InfoRequest(), timeout=60)
    assert info.edge_bundle_fingerprint
    return str(info.edge_bundle_fingerprint)


def _sync(address: str, since: int, **options) -> list[pb.SyncVectorsResponse]:  # type: ignore[no-untyped-def]
    channel, service = stub(address)
    with channel:
        request = pb.SyncVectorsRequest(collection=COLLECTION, since_sequence=since, **options)
        return list(service.SyncVectors(request, timeout=120))


def test_sync_streams_changes_in_batches_and_resumes(live_server) -> None:  # type: ignore[no-untyped-def]
    fingerprint = _bundle_fingerprint(live_server.address)
    docs = scifact_docs(300, skip=100)
    ingest(live_server.address, COLLECTION, docs)
    messages = _sync(live_server.address, 0, bundle_fingerprint=fingerprint, dimensions=64)
    changes = [c for m in messages for c in m.changes]
    assert len(messages) >= 2  # several changes per message, more than one message
    assert [c.sequence for c in changes] == list(range(1, 301))
    assert all(m.head_sequence == 300 for m in messages) and messages[-1].remaining == 0
    assert messages[0].remaining == 300 - len(messages[0].changes)
    first = changes[0]
    assert first.op == pb.VectorChange.OP_UPSERT and first.id == docs[0][0] and first.text == docs[0][1]
    assert first.vector.dims == 64 and first.vector.precision == pb.PRECISION_FLOAT32
    vectors = np.stack([np.frombuffer(c.vector.data, dtype="<f4") for c in changes])
    assert vectors.shape == (300, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)

    # a client that applied up to 150 resumes there (its checkpoint names the collection's
    # incarnation); then an update and a delete arrive
    incarnation = messages[0].incarnation
    assert len(incarnation) == 32 and not any(m.reset for m in messages)
    resumed = [
        c
        for m in _sync(live_server.address, 150, bundle_fingerprint=fingerprint, incarnation=incarnation)
        for c in m.changes
    ]
    assert [c.sequence for c in resumed] == list(range(151, 301))
    assert resumed[0].vector.dims > 0  # 0 = the bundle's default dimensions
    ingest(live_server.address, COLLECTION, [(docs[0][0], docs[0][1] + " Revised.", {})])
    channel, service = stub(live_server.address)
    with channel:
        service.Delete(pb.DeleteRequest(collection=COLLECTION, ids=[docs[1][0]]), timeout=60)
    tail = [
        c
        for m in _sync(
            live_server.address,
            300,
            bundle_fingerprint=fingerprint,
            include_text=False,
            incarnation=incarnation,
        )
        for c in m.changes
    ]
    assert [(c.sequence, c.op, c.id) for c in tail] == [
        (301, pb.VectorChange.OP_UPSERT, docs[0][0]),
        (302, pb.VectorChange.OP_DELETE, docs[1][0]),
    ]
    assert tail[0].text == "" and not tail[1].HasField("vector")
    # the log keeps one entry per document: a full resync sees each id once
    full = [c for m in _sync(live_server.address, 0, bundle_fingerprint=fingerprint) for c in m.changes]
    assert len(full) == 300 and len({c.id for c in full}) == 300
    nothing = _sync(live_server.address, 302, bundle_fingerprint=fingerprint, incarnation=incarnation)
    assert len(nothing) == 1 and not nothing[0].changes and nothing[0].head_sequence == 302


def test_sync_with_another_bundle_is_refused(live_server) -> None:  # type: ignore[no-untyped-def]
    ingest(live_server.address, COLLECTION, scifact_docs(1, skip=100))
    with pytest.raises(grpc.RpcError) as info:
        _sync(live_server.address, 0, bundle_fingerprint="edge-not-this-one")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "GetEdgeBundle" in info.value.details()


def test_sync_with_more_dimensions_than_the_projection_has_is_refused(live_server) -> None:  # type: ignore[no-untyped-def]
    ingest(live_server.address, COLLECTION, scifact_docs(1, skip=100))
    fingerprint = _bundle_fingerprint(live_server.address)
    served = EdgeBundle.load(live_server.data_dir / "edge_bundle")
    assert served.fingerprint == fingerprint
    # identity or rotation: the model's 384 dims (an adaptor, after a large store: 256)
    limit = served.projection.max_dims
    with pytest.raises(grpc.RpcError) as info:
        _sync(live_server.address, 0, bundle_fingerprint=fingerprint, dimensions=limit + 1)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"dimensions must be at most {limit}" in info.value.details()
    assert f"got {limit + 1}" in info.value.details()
    ok = _sync(live_server.address, 0, bundle_fingerprint=fingerprint, dimensions=limit)
    assert ok[0].changes[0].vector.dims == limit
