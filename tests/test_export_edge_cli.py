"""``embed-server export-edge``: fitted on a small real store, and bad values refused."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from embedcore import EdgeBundle, fit_pca_rotation
from server.cli import build_parser
from server.model import ModelSpec
from server.store import Upsert, content_hash, open_store
from tests._collections import scifact_docs


def _export(*argv: str) -> int:
    args = build_parser().parse_args(["export-edge", *argv])
    return int(args._run(args))


def test_export_edge_fits_the_store_and_refuses_an_unknown_projection(
    spec: ModelSpec,
    edge_bundle: EdgeBundle,
    edge_onnx_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    texts = [text[:300] for _, text, _ in scifact_docs(80, skip=320)]  # short: a fast encode
    vectors = edge_bundle.encoder(int8=False).encode(texts)  # the model's own vectors
    store = open_store(tmp_path / "data")
    try:
        store.upsert(
            [
                Upsert("small", f"d{i}", content_hash(spec.fingerprint, "", t), t, {}, v)
                for i, (t, v) in enumerate(zip(texts, vectors, strict=True))
            ],
            fingerprint=spec.fingerprint,
            dimension=spec.dimension,
        )
        stored, _ = store.sample_documents(1000, fingerprint=spec.fingerprint)
    finally:
        store.close()
    common = ["--edge-dims", "32", "--edge-fit-min-vectors", "64", "--data-dir", str(tmp_path / "data")]
    common += ["--workers", "1"]

    # Default --edge-projection adaptor: 80 documents are below MIN_FIT_DOCS, so the PCA rotation is
    # fitted and no pseudo-query is embedded (nor reported in the manifest).
    assert _export("--out", str(tmp_path / "a"), *common) == 0
    assert "rotation projection (80 vectors + 0 pseudo-queries from store" in capsys.readouterr().out
    adaptor_asked = EdgeBundle.load(tmp_path / "a", verify=True)
    extra = adaptor_asked.manifest.extra
    assert adaptor_asked.manifest.projection_kind == "rotation" and adaptor_asked.manifest.default_dims == 32
    assert (extra["fit_vectors"], extra["fit_pseudo_queries"], extra["kind"]) == (80, 0, "rotation")
    assert adaptor_asked.projection.sha256() == fit_pca_rotation(stored).sha256()

    assert _export("--out", str(tmp_path / "r"), "--edge-projection", "rotation", *common) == 0
    assert EdgeBundle.load(tmp_path / "r").fingerprint == adaptor_asked.fingerprint  # same fit

    with pytest.raises(SystemExit) as refused:
        _export("--out", str(tmp_path / "x"), "--edge-projection", "pca")
    assert refused.value.code == 2
    assert "--edge-projection: invalid choice: 'pca'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_export_edge_makes_the_running_servers_bundle_from_the_same_store(tmp_path: Path) -> None:
    from protos.embedding.v1 import embedding_pb2 as pb
    from protos.embedding.v1.embedding_pb2_grpc import EdgeServiceStub, EmbeddingServiceStub
    from tests._collections import ingest
    from tests.server_harness import running_server

    settings = ("--edge-fit-min-vectors", "200", "--edge-dims", "64", "--workers", "1")
    with running_server(tmp_path / "data", *settings) as server:
        acks = ingest(server.address, "export", scifact_docs(240))
        assert len(acks) == 240 and not any(a.HasField("error") for a in acks)
        with grpc.insecure_channel(server.address) as channel:
            # A client fetching the bundle makes the server fit it on the 240 stored documents.
            fetch = EdgeServiceStub(channel).GetEdgeBundle(pb.GetEdgeBundleRequest(files=["tokenizer.json"]))
            assert next(iter(fetch)).manifest.fingerprint
            served = EmbeddingServiceStub(channel).Info(pb.InfoRequest(), timeout=30).edge_bundle_fingerprint
        assert server.stop() == 0
    assert _export("--out", str(tmp_path / "exported"), "--data-dir", str(tmp_path / "data"), *settings) == 0
    exported = EdgeBundle.load(tmp_path / "exported", verify=True)
    on_disk = EdgeBundle.load(tmp_path / "data" / "edge_bundle", verify=True)
    # Fitted on every stored vector: one per chunk (abstracts past 254 tokens are chunked).
    store = open_store(tmp_path / "data")
    try:
        stored_vectors = len(store.sample_documents(10_000)[0])
    finally:
        store.close()
    assert stored_vectors > 240
    assert exported.manifest.projection_kind == "rotation"
    assert exported.manifest.extra["fit_vectors"] == stored_vectors
    assert exported.fingerprint == on_disk.fingerprint == served
