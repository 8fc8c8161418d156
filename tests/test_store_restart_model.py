"""Restart keeps search results; a different model never serves old vectors; reembed fixes it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import EmbeddingServiceStub
from server.model import load_spec
from server.store import content_hash, open_store
from tests._collections import ingest, ranked, scifact_docs, scifact_queries, search, stub
from tests.server_harness import running_server

COLLECTION = "restart"


def _results(address: str) -> list[tuple[list[str], list[str]]]:
    return [
        (ranked(search(address, COLLECTION, q, k=5)), ranked(search(address, COLLECTION, q, k=5, exact=True)))
        for q in scifact_queries(5)
    ]


@pytest.mark.slow  # several server starts
def test_restart_then_model_change_then_reembed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    docs = scifact_docs(100, skip=200)
    # Two documents past the model's 256 tokens, chunked or not by their own request (the
    # server chunks by default, so many of the 100 abstracts are chunked too): reembed must keep
    # each one's form, whatever its own flags.
    long_text = " ".join(text for _, text, _ in scifact_docs(6, skip=300))
    with running_server(data) as server:
        ingest(server.address, COLLECTION, docs)
        channel, service = stub(server.address)
        with channel:
            long_acks = list(
                service.Ingest(
                    iter(
                        [
                            pb.IngestRequest(collection="long", id="chunked", text=long_text, chunking=True),
                            pb.IngestRequest(collection="long", id="whole", text=long_text, chunking=False),
                        ]
                    ),
                    timeout=600,
                )
            )
        assert [a.chunks_embedded + a.chunks_cached > 1 for a in long_acks] == [True, False]
        before = _results(server.address)
        assert server.stop() == 0
    with running_server(data) as server:
        assert _results(server.address) == before
        # Saved at shutdown, not rebuilt (the logger's name: the lexical index says the same words).
        assert "server.store.index: index 'restart' loaded at sequence 100" in server.log()
        assert server.stop() == 0

    # "another model": the same weights with an edited config file, hence another fingerprint
    spec = load_spec()
    copy = tmp_path / "model-copy"
    shutil.copytree(spec.path, copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")
    new = load_spec(str(copy))
    assert new.fingerprint != spec.fingerprint
    model_args = ("--model", str(copy), "--no-edge-int8")
    with running_server(data, *model_args) as server:
        log = server.log()
        assert f"collection 'restart' holds vectors of model {spec.fingerprint}" in log and "reembed" in log
        with pytest.raises(grpc.RpcError) as info:
            search(server.address, COLLECTION, "anything")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "embed-server reembed" in info.value.details()
        acks = ingest(server.address, COLLECTION, docs[:1])
        assert acks[0].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        with grpc.insecure_channel(server.address) as channel:
            info_reply = EmbeddingServiceStub(channel).Info(pb.InfoRequest(), timeout=60)
        row = next(c for c in info_reply.collections if c.name == COLLECTION)
        assert row.stale and row.model_fingerprint == spec.fingerprint and row.documents == 100
        channel, service = stub(server.address)
        with channel, pytest.raises(grpc.RpcError) as info:
            list(
                service.SyncVectors(
                    pb.SyncVectorsRequest(
                        collection=COLLECTION, bundle_fingerprint=info_reply.edge_bundle_fingerprint
                    ),
                    timeout=60,
                )
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert server.stop() == 0

    done = subprocess.run(
        [sys.executable, "-m", "server", "reembed", "--data-dir", str(data), *model_args, "--chunking"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'restart': 100 docs, 100 embedded, 0 reused" in done.stdout
    store = open_store(data)
    try:
        assert store.collection_rows(new.fingerprint)[0].stale is False
        doc = store.documents(COLLECTION, [docs[0][0]])[0]
        assert doc is not None and doc.content_hash == content_hash(new.fingerprint, "", docs[0][1])
        assert doc.sequence > 100  # logged again: edge clients resync the new vectors
        chunked, whole = store.documents("long", ["chunked", "whole"])
        assert chunked is not None and len(chunked.chunks) > 1  # chunked again under the new model
        assert whole is not None and not whole.chunks  # still whole, though reembed ran with --chunking
        restart = [d for d in store.documents(COLLECTION, [doc_id for doc_id, _, _ in docs]) if d is not None]
        assert len(restart) == 100 and any(len(d.chunks) > 1 for d in restart)  # abstracts past 254 tokens
        vectors = len({h for d in [*restart, chunked, whole] for h in d.hashes})
        removed, kept = store.gc()
        # the old model's vectors, no longer referenced, one per chunk (a whole document is one)
        assert (removed, kept) == (vectors, vectors)
    finally:
        store.close()
