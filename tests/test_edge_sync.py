"""SyncVectors into the local index: full, incremental with deletes, resumed after a break."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from edge_client import EdgeClient, FingerprintMismatch, ServerUnavailable
from edge_client._sync import sync_collection
from edge_client._transport import open_channel
from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import CollectionServiceStub
from tests._collections import ingest

SAMPLE = Path(__file__).resolve().parent.parent / "server" / "samples" / "sample_corpus.jsonl"


def _sample_docs() -> list[tuple[str, str, dict[str, Any]]]:
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    return [(r["_id"], f"{r['title']} {r['text']}", {"title": r["title"]}) for r in rows]


def _delete(address: str, collection: str, ids: list[str]) -> None:
    with grpc.insecure_channel(address) as channel:
        CollectionServiceStub(channel).Delete(pb.DeleteRequest(collection=collection, ids=ids), timeout=60)


class _BreakAfterHalf(grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Delivers half of the first SyncVectors message, then fails like a dropped connection."""

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        stream = continuation(details, request)
        if not details.method.endswith("SyncVectors"):
            return stream

        def broken() -> Iterator[Any]:
            first = next(iter(stream))
            half = pb.SyncVectorsResponse()
            half.CopyFrom(first)
            del half.changes[len(first.changes) // 2 :]
            yield half
            stream.cancel()
            raise _Unavailable()

        return broken()


class _Unavailable(grpc.RpcError):  # type: ignore[misc]
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection dropped (test)"


@pytest.fixture(scope="module")
def synced(live_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EdgeClient, str]]:
    collection = f"edge-sync-{uuid.uuid4().hex[:8]}"
    ingest(live_server.address, collection, _sample_docs())
    client = EdgeClient(tmp_path_factory.mktemp("edge-sync"), server=live_server.address)
    client.init()
    report = client.sync(collection)
    assert report.full_resync and report.upserts == 56 and report.documents == 56
    yield client, collection
    client.close()


def test_synced_vectors_equal_what_the_edge_encoder_computes(synced: tuple[EdgeClient, str]) -> None:
    client, collection = synced
    index = client.index(collection)
    texts = [text for _, text, _ in _sample_docs()[:8]]
    ids = [doc_id for doc_id, _, _ in _sample_docs()[:8]]
    own = client.bundle.embed(texts, index.dims, kind="document", int8=False)
    for doc_id, vector in zip(ids, own, strict=True):
        hit = index.search(vector, 1)[0]
        assert hit.id == doc_id
        # f16 storage and the server's compute dtype (bf16 on some CPUs) bound the difference.
        assert hit.score > 0.995


def test_incremental_sync_applies_upserts_and_deletes(
    live_server: Any, synced: tuple[EdgeClient, str]
) -> None:
    client, collection = synced
    before = int(client.index(collection).get_state("sequence"))
    _delete(live_server.address, collection, ["cook-1", "cook-2", "missing-id"])
    ingest(live_server.address, collection, [("extra-1", "Quantum computers use qubits.", {})])
    report = client.sync(collection)
    assert not report.full_resync
    assert (report.upserts, report.deletes) == (1, 2)
    assert report.sequence > before and report.documents == 55
    ids = {h.id for h in client.search_local("sourdough bread starter", collection=collection, k=55)}
    assert "cook-1" not in ids and "extra-1" in ids
    assert client.sync(collection).upserts == 0  # nothing new: nothing applied


def test_sync_resumes_after_an_interrupted_stream(live_server: Any, tmp_path: Path) -> None:
    collection = f"edge-resume-{uuid.uuid4().hex[:8]}"
    docs = _sample_docs()  # stored already by other tests: ingestion is a cache hit, fast
    ingest(live_server.address, collection, docs)
    with EdgeClient(tmp_path / "edge", server=live_server.address) as client:
        client.init()
        index = client.index(collection)
        broken = grpc.intercept_channel(open_channel(live_server.address), _BreakAfterHalf())
        with pytest.raises(ServerUnavailable, match="resume"):
            sync_collection(
                CollectionServiceStub(broken),
                index,
                collection=collection,
                bundle_fingerprint=client.bundle.fingerprint,
            )
        broken.close()
        partial = int(index.get_state("sequence"))
        assert 0 < partial < len(docs) and len(index) == partial  # checkpointed what arrived, in order
        reopened = EdgeClient(tmp_path / "edge", server=live_server.address)
        report = reopened.sync(collection)
        assert not report.full_resync and report.upserts == len(docs) - partial
        assert report.documents == len(docs)
        reopened.close()


def test_sync_refuses_another_bundle_with_a_clear_message(
    live_server: Any, synced: tuple[EdgeClient, str]
) -> None:
    client, collection = synced
    with grpc.insecure_channel(live_server.address) as channel, pytest.raises(FingerprintMismatch) as caught:
        sync_collection(
            CollectionServiceStub(channel),
            client.index(f"{collection}-x"),
            collection=collection,
            bundle_fingerprint="edge-0000000000000000",
        )
    assert "edge-client init" in str(caught.value)
    assert "edge-0000000000000000" in str(caught.value)


def test_cli_search_json_shape(live_server: Any, synced: tuple[EdgeClient, str]) -> None:
    client, collection = synced
    for mode in ("local", "server"):
        result = subprocess.run(
            [sys.executable, "-m", "edge_client", "search", "how do black holes trap light", "--home",
             str(client.home), "--collection", collection, "--mode", mode, "--k", "3", "--json"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        assert set(out) == {"results", "source", "degraded", "reason"}
        assert out["source"] == mode and out["degraded"] is False
        assert out["results"][0]["id"] == "astro-1"
        assert set(out["results"][0]) == {
            "id", "score", "text", "metadata", "text_truncated", "snippet_start", "snippet_stop", "snippet"
        }  # fmt: skip
        assert np.isfinite(out["results"][0]["score"])


def test_index_built_with_another_bundle_is_rebuilt_by_a_full_resync(
    synced: tuple[EdgeClient, str],
) -> None:
    """What happens after `init` fetched a bundle with a new rotation: the next sync starts over."""
    client, collection = synced
    index = client.index(collection)
    index.set_state("bundle_fingerprint", "edge-from-an-older-rotation")
    index.save()
    before = len(index)
    report = client.sync(collection)
    assert report.full_resync and report.upserts >= before > 0
    assert report.documents == before
    assert index.get_state("bundle_fingerprint") == client.bundle.fingerprint
