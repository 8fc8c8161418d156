"""``embed-server export-edge --projection``: fitted on a small real store, and bad values refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_client._bundle import EdgeBundle
from edge_client._projection import fit_pca_rotation
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
            dimensions=spec.dimensions,
        )
        stored, _ = store.sample_documents(1000, fingerprint=spec.fingerprint)
    finally:
        store.close()
    common = (
        "--dims",
        "32",
        "--fit-data-dir",
        str(tmp_path / "data"),
        "--onnx-cache",
        str(edge_onnx_dir.parent),
    )

    # Default --projection adaptor: 80 documents are below MIN_FIT_DOCS, so the PCA rotation is
    # fitted and no pseudo-query is embedded (nor reported in the manifest).
    assert _export("--out", str(tmp_path / "a"), *common) == 0
    assert "rotation projection (80 vectors + 0 pseudo-queries from store" in capsys.readouterr().out
    adaptor_asked = EdgeBundle.load(tmp_path / "a", verify=True)
    extra = adaptor_asked.manifest.extra
    assert adaptor_asked.manifest.projection_kind == "rotation" and adaptor_asked.manifest.default_dims == 32
    assert (extra["fit_vectors"], extra["fit_pseudo_queries"], extra["kind"]) == (80, 0, "rotation")
    assert adaptor_asked.projection.sha256() == fit_pca_rotation(stored).sha256()

    assert _export("--out", str(tmp_path / "r"), "--projection", "rotation", *common) == 0
    assert EdgeBundle.load(tmp_path / "r").fingerprint == adaptor_asked.fingerprint  # same fit

    with pytest.raises(SystemExit) as refused:
        _export("--out", str(tmp_path / "x"), "--projection", "pca")
    assert refused.value.code == 2
    assert "--projection: invalid choice: 'pca'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
