"""The server fits the "adaptor" edge projection on its own store (pseudo-queries embedded by its
pool at start), and an edge client synced from that bundle agrees with its own ONNX encoder.

The adaptor threshold (--edge-adaptor-min-docs, default 2000) is lowered so that ~100 real
SciFact abstracts are enough; the code path is the production one.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from edge_client import EdgeClient
from embedcore import EdgeBundle
from protos.embedding.v1 import embedding_pb2 as pb
from server.store import open_store
from tests._collections import ingest, scifact_docs, stub
from tests.server_harness import running_server

COLLECTION = "adaptor-live"
FIT_ARGS = ("--edge-fit-min-vectors", "64", "--edge-adaptor-min-docs", "64", "--workers", "1")


def _synced_vectors(address: str, fingerprint: str, dims: int) -> dict[str, np.ndarray]:
    """What SyncVectors sends for every document of COLLECTION: id -> float32 vector."""
    channel, service = stub(address)
    with channel:
        request = pb.SyncVectorsRequest(
            collection=COLLECTION, bundle_fingerprint=fingerprint, dimensions=dims
        )
        changes = [c for m in service.SyncVectors(request, timeout=120) for c in m.changes]
    return {c.id: np.frombuffer(c.vector.data, dtype="<f4") for c in changes}


def test_server_fits_the_adaptor_at_restart_and_the_edge_agrees(tmp_path: Path) -> None:
    data = tmp_path / "data"
    docs = scifact_docs(100, skip=300)  # real multi-sentence abstracts
    with running_server(data, *FIT_ARGS) as server:  # empty store: an identity bundle
        ingest(server.address, COLLECTION, docs)
        assert server.stop() == 0
    store = open_store(data)
    try:  # one vector per chunk: abstracts past the model's 254 tokens are chunked
        stored_vectors = len(store.sample_documents(10_000)[0])
    finally:
        store.close()
    assert stored_vectors > 100
    # The restart finds an unfitted bundle and 100 >= 64 documents: it embeds sentences of the
    # stored texts with its pool (not started yet at that point), then fits the adaptor.
    with running_server(data, *FIT_ARGS) as server:
        served = EdgeBundle.load(data / "edge_bundle", verify=True)
        manifest = served.manifest
        assert manifest.projection_kind == "adaptor" and manifest.extra["kind"] == "adaptor"
        assert manifest.extra["fit_vectors"] == stored_vectors and manifest.extra["fit_pseudo_queries"] > 100
        assert served.projection.max_dims == 256

        with EdgeClient(tmp_path / "edge", server=server.address) as client:
            bundle = client.init()
            assert bundle.fingerprint == served.fingerprint
            report = client.sync(COLLECTION)
            assert report.full_resync and report.upserts == 100 and report.documents == 100
            dims = client.index(COLLECTION).dims
            assert dims == manifest.default_dims == 128

            # The edge's own encoding (fp32 ONNX, then the adaptor) equals the synced vector.
            synced = _synced_vectors(server.address, bundle.fingerprint, dims)
            sample = docs[:: len(docs) // 8]
            own = bundle.embed([text for _, text, _ in sample], dims, kind="document", int8=False)
            cosines = [float(v @ synced[doc_id]) for (doc_id, _, _), v in zip(sample, own, strict=True)]
            # f32 ONNX vs the server's compute dtype (bf16 on some CPUs), through the adaptor.
            assert min(cosines) >= 0.99, cosines

            doc_id, text, _ = docs[37]
            hits = client.search_local(text, collection=COLLECTION, k=5)
            assert hits[0].id == doc_id

            # The adaptor has 256 outputs: more is refused, naming the field and the limit.
            channel, service = stub(server.address)
            request = pb.SyncVectorsRequest(
                collection=COLLECTION, bundle_fingerprint=bundle.fingerprint, dimensions=257
            )
            with channel, pytest.raises(grpc.RpcError) as refused:
                list(service.SyncVectors(request, timeout=60))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "dimensions must be at most 256" in str(refused.value.details())
        assert server.stop() == 0
