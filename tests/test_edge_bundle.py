"""Edge bundle: served by GetEdgeBundle, verified and installed by the client; bad downloads rejected."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import embedcore
from edge_client import BundleIntegrityError, EdgeClient
from edge_client._transport import open_channel
from embedcore import EdgeBundle, Projection, fit_pca_rotation, sha256_file
from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import EmbeddingServiceStub
from server.edge_builder import EdgeBundles, prefer_truncation
from server.edge_bundle import build_bundle
from server.model import ModelSpec
from server.pool import EncoderPool
from server.settings import Settings
from server.store import Store, Upsert, content_hash, open_store

Mangle = Callable[[int, Any], Any]  # (attempt, message) -> message or None to drop it


class _StreamMangler(grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Rewrites GetEdgeBundle streams on the first ``bad_attempts`` calls."""

    def __init__(self, mangle: Mangle, bad_attempts: int) -> None:
        self.mangle, self.bad_attempts, self.calls = mangle, bad_attempts, 0

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        stream = continuation(details, request)
        if not details.method.endswith("GetEdgeBundle"):
            return stream
        self.calls += 1
        if self.calls > self.bad_attempts:
            return stream
        attempt = self.calls

        def mangled() -> Iterator[Any]:
            for message in stream:
                out = self.mangle(attempt, message)
                if out is not None:
                    yield out

        return mangled()


def _flip_first_model_byte(_: int, message: Any) -> Any:
    if (
        message.WhichOneof("part") == "chunk"
        and message.chunk.path == "model.onnx"
        and message.chunk.offset == 0
    ):
        data = bytearray(message.chunk.data)
        data[100] ^= 0xFF
        return pb.EdgeBundleChunk(chunk=pb.FileChunk(path="model.onnx", offset=0, data=bytes(data)))
    return message


def _drop_last_projection_chunk(_: int, message: Any) -> Any:
    if message.WhichOneof("part") == "chunk" and message.chunk.path == "projection.npz":
        return None  # the file never arrives: a partial download
    return message


def test_bundle_round_trip_with_hash_check(live_server: Any, tmp_path: Path) -> None:
    with EdgeClient(tmp_path / "edge", server=live_server.address) as client:
        bundle = client.init()
        with grpc.insecure_channel(live_server.address) as channel:
            info = EmbeddingServiceStub(channel).Info(pb.InfoRequest(), timeout=30)
    assert bundle.fingerprint == info.edge_bundle_fingerprint != ""
    server_copy = EdgeBundle.load(live_server.data_dir / "edge_bundle", verify=True)
    assert server_copy.fingerprint == bundle.fingerprint
    for name, entry in bundle.manifest.files.items():
        assert sha256_file(tmp_path / "edge" / "bundle" / name) == entry.sha256
        assert entry == server_copy.manifest.files[name]
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json", "projection.npz"} <= set(bundle.manifest.files)
    assert bundle.manifest.model_fingerprint == info.model_fingerprint
    assert bundle.manifest.default_dims == 128 and 64 in bundle.manifest.matryoshka_dims
    assert not list((tmp_path / "edge").glob(".bundle-download.*"))  # staging cleaned up


@pytest.mark.parametrize("mangle", [_flip_first_model_byte, _drop_last_projection_chunk])
def test_corrupted_or_partial_download_is_rejected_then_retried(
    live_server: Any, tmp_path: Path, mangle: Mangle
) -> None:
    mangler = _StreamMangler(mangle, bad_attempts=1)
    channel = grpc.intercept_channel(open_channel(live_server.address), mangler)
    with EdgeClient(tmp_path / "edge", channel=channel) as client:
        bundle = client.init(attempts=3)
    channel.close()
    assert mangler.calls == 2  # one rejected attempt, one good one
    EdgeBundle.load(bundle.directory, verify=True)


def test_always_corrupted_download_installs_nothing(live_server: Any, tmp_path: Path) -> None:
    channel = grpc.intercept_channel(
        open_channel(live_server.address), _StreamMangler(_flip_first_model_byte, 99)
    )
    with (
        EdgeClient(tmp_path / "edge", channel=channel) as client,
        pytest.raises(BundleIntegrityError, match="sha256"),
    ):
        client.init(attempts=2)
    channel.close()
    assert not (tmp_path / "edge" / "bundle").exists()


def test_tampered_installed_file_is_detected(edge_bundle: EdgeBundle, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(edge_bundle.directory, copy)
    path = copy / "projection.npz"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(embedcore.BundleIntegrityError, match=r"projection\.npz"):
        EdgeBundle.load(copy, verify=True)


def test_pca_rotation_is_orthogonal_keeps_full_similarity_and_orders_variance(
    edge_bundle: EdgeBundle,
) -> None:
    rng = np.random.default_rng(0)
    texts = [
        f"document number {i} about {w}"
        for i, w in enumerate(rng.choice(["cats", "tax", "rain", "jazz"], 80))
    ]
    full = edge_bundle.encoder(int8=False).encode(texts)
    projection = fit_pca_rotation(full)
    r = projection.matrix
    assert r is not None
    assert np.allclose(r.T @ r, np.eye(384), atol=1e-4)
    rotated = projection.apply(full, 384)
    assert np.allclose(rotated @ rotated.T, full @ full.T, atol=1e-4)
    variance = (full @ r).var(axis=0)
    assert variance[:8].sum() > variance[8:16].sum() > variance[-8:].sum()
    assert Projection.load_bytes(projection.to_bytes()).sha256() == projection.sha256()


def test_rotation_is_part_of_the_bundle_fingerprint(
    spec: ModelSpec, edge_bundle: EdgeBundle, edge_onnx_dir: Path, tmp_path: Path
) -> None:
    full = edge_bundle.encoder(int8=False).encode([f"text {i} {i * i}" for i in range(40)])
    rotated = build_bundle(
        spec, tmp_path / "b", fit_pca_rotation(full), default_dims=128, onnx_dir=edge_onnx_dir
    )
    assert rotated.fingerprint != edge_bundle.fingerprint
    assert rotated.manifest.projection_kind == "rotation"
    again = build_bundle(
        spec, tmp_path / "b", fit_pca_rotation(full), default_dims=128, onnx_dir=edge_onnx_dir
    )
    assert again.fingerprint == rotated.fingerprint  # deterministic: same fit, same fingerprint


def _store_with(data_dir: Path, spec: ModelSpec, vectors: np.ndarray, *, collection: str = "c") -> Store:
    """A real LMDB store holding ``vectors`` as documents stored without text."""
    store = open_store(data_dir)
    store.upsert(
        [
            Upsert(collection, f"d{i}", content_hash(spec.fingerprint, "", f"{collection} {i}"), None, {}, v)
            for i, v in enumerate(vectors)
        ],
        fingerprint=spec.fingerprint,
        dimension=spec.dimension,
    )
    return store


def _bundles(settings: Settings, spec: ModelSpec, store: Store) -> EdgeBundles:
    # The pool is never started: these stores hold no text, so no pseudo-query is embedded.
    return EdgeBundles(settings, spec, store, EncoderPool(settings, spec))


def test_server_bundle_fits_the_rotation_once_the_store_has_enough_vectors(
    spec: ModelSpec, edge_bundle: EdgeBundle, edge_onnx_dir: Path, tmp_path: Path
) -> None:
    texts = [
        f"note {i}: {w} and {v}"
        for i, (w, v) in enumerate(zip(["tea", "rust", "owls", "maps"] * 20, range(80), strict=True))
    ]
    vectors = edge_bundle.encoder(int8=False).encode(texts)
    settings = Settings(data_dir=tmp_path, edge_onnx_cache=str(edge_onnx_dir.parent), edge_fit_min_vectors=60)

    def build(store: Store) -> EdgeBundle:
        try:
            return asyncio.run(_bundles(settings, spec, store).load_or_build())
        finally:
            store.close()

    first = build(_store_with(tmp_path / "few", spec, vectors[:30]))
    assert first.manifest.projection_kind == "identity" and first.manifest.extra["fit_vectors"] == 0
    assert build(_store_with(tmp_path / "few2", spec, vectors[:30])).fingerprint == first.fingerprint
    fitted = build(_store_with(tmp_path / "all", spec, vectors))
    # The default --edge-projection is the adaptor, but 80 documents are far below its
    # MIN_FIT_DOCS, so the server fits the PCA rotation (no pseudo-queries embedded).
    assert settings.edge_projection == "adaptor"
    assert fitted.manifest.projection_kind == "rotation" and fitted.manifest.extra["fit_vectors"] == 80
    assert fitted.manifest.extra["kind"] == "rotation" and fitted.manifest.extra["fit_pseudo_queries"] == 0
    assert fitted.fingerprint != first.fingerprint
    # Fitted once: kept across restarts, even when the store's sample would now differ.
    assert build(_store_with(tmp_path / "other", spec, vectors[::-1][:70])).fingerprint == fitted.fingerprint


def test_a_store_without_texts_keeps_its_rotation_and_is_not_walked_again_until_it_changes(
    spec: ModelSpec,
    edge_bundle: EdgeBundle,
    edge_onnx_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vectors = edge_bundle.encoder(int8=False).encode(
        [f"fact {i} about {w}" for i, w in enumerate(["ice", "salt"] * 40)]
    )
    settings = Settings(data_dir=tmp_path, edge_onnx_cache=str(edge_onnx_dir.parent), edge_fit_min_vectors=60)
    store = _store_with(tmp_path / "data", spec, vectors)
    walks: list[int] = []
    sample = store.sample_documents

    def counted(*args: Any, **kwargs: Any) -> tuple[np.ndarray, list[str | None]]:
        walks.append(1)
        return sample(*args, **kwargs)

    monkeypatch.setattr(store, "sample_documents", counted)
    try:
        rotation = asyncio.run(_bundles(settings, spec, store).load_or_build())
        assert rotation.manifest.projection_kind == "rotation" and len(walks) == 1  # 80 < 2000 docs
        # Enough documents for the adaptor now, but no texts for its pseudo-queries: the rotation stays.
        adaptor_settings = dataclasses.replace(settings, edge_adaptor_min_docs=60)
        again = asyncio.run(_bundles(adaptor_settings, spec, store).load_or_build())
        assert again.fingerprint == rotation.fingerprint and len(walks) == 2
        again = asyncio.run(_bundles(adaptor_settings, spec, store).load_or_build())
        assert again.fingerprint == rotation.fingerprint
        assert len(walks) == 2  # the same store state was already sampled: no walk at this start
        store.delete("c", ["d0"])  # the store changed: look again
        again = asyncio.run(_bundles(adaptor_settings, spec, store).load_or_build())
        assert again.fingerprint == rotation.fingerprint and len(walks) == 3
    finally:
        store.close()


def test_an_mrl_model_keeps_plain_truncation_unless_the_fit_measures_better(
    spec: ModelSpec,
    edge_bundle: EdgeBundle,
    edge_onnx_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An MRL-trained model (its spec declares matryoshka_dims, as a fine-tuned one does): the
    fitted projection is compared with truncation on held-out queries and kept only when better."""
    full = edge_bundle.encoder(int8=False).encode(
        [
            f"finding {i}: {w} changes {v}"
            for i, (w, v) in enumerate(zip(["gene", "drug"] * 40, range(80), strict=True))
        ]
    )
    # PCA at 16 dims keeps far more of the neighbours than the first 16 dims of a model that was
    # not MRL-trained: the rotation is kept.
    rotation = fit_pca_rotation(full)
    kept, choice = prefer_truncation(rotation, full[:20], full, 16)
    scores = choice["fidelity@10"]
    assert isinstance(scores, dict) and scores["rotation"] > scores["identity"] + 0.1
    assert kept is rotation
    # Vectors whose information is all in their first 64 dims: truncation to 128 loses nothing,
    # no fit can do better, and the server keeps plain truncation, recorded in the manifest.
    short = full.copy()
    short[:, 64:] = 0.0
    short /= np.linalg.norm(short, axis=1, keepdims=True)
    mrl = dataclasses.replace(spec, matryoshka_dims=(384, 256, 128, 64, 32))
    settings = Settings(data_dir=tmp_path, edge_onnx_cache=str(edge_onnx_dir.parent), edge_fit_min_vectors=60)
    store = _store_with(tmp_path / "data", mrl, short)
    walks: list[int] = []
    sample = store.sample_documents

    def counted(*args: Any, **kwargs: Any) -> tuple[np.ndarray, list[str | None]]:
        walks.append(1)
        return sample(*args, **kwargs)

    monkeypatch.setattr(store, "sample_documents", counted)
    try:
        bundle = asyncio.run(_bundles(settings, mrl, store).load_or_build())
        assert bundle.manifest.projection_kind == "identity"
        assert bundle.manifest.extra["fit_vectors"] == 80  # measured, not "too few to fit"
        recorded = bundle.manifest.extra["mrl_choice"]
        assert recorded["fitted"] == "rotation" and recorded["queries"] == 16  # 20% of 80, held out
        assert recorded["fidelity@10"]["identity"] == pytest.approx(1.0)
        # Kept across restarts; like a rotation under --edge-projection adaptor, the next start
        # samples the store once to find the adaptor still out of reach, and later starts do not.
        for sampled in (2, 2):
            again = asyncio.run(_bundles(settings, mrl, store).load_or_build())
            assert again.fingerprint == bundle.fingerprint and len(walks) == sampled
    finally:
        store.close()
