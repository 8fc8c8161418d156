"""The second real model (server.model_variants): the bundled model with a seeded orthogonal Dense
head. Reproducible (same seed, same fingerprint), distinct from the base model, and a real model:
its vectors are the base model's projected, so it still ranks texts by meaning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedcore import ModelTokenizer, l2_normalize, tokenize_batch
from server.model import ModelSpec, load_spec
from server.model_variants import build_projected_model, orthogonal_rows
from server.pool.backends import BackendConfig, load_backend

TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]


def _vectors(spec: ModelSpec, texts: list[str]) -> np.ndarray:
    backend = load_backend(spec, BackendConfig(kind="torch", device="cpu", dtype="float32", threads=1))
    batch = tokenize_batch(ModelTokenizer(spec.path / "tokenizer.json", max_tokens=spec.max_tokens), texts)
    raw = backend.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    return l2_normalize(raw)


def test_orthogonal_rows_are_orthonormal_and_seeded() -> None:
    rows = orthogonal_rows(256, 384, seed=3)
    assert rows.shape == (256, 384) and rows.dtype == np.float32
    np.testing.assert_allclose(rows @ rows.T, np.eye(256), atol=1e-5)
    np.testing.assert_array_equal(rows, orthogonal_rows(256, 384, seed=3))
    assert not np.allclose(rows, orthogonal_rows(256, 384, seed=4))
    with pytest.raises(ValueError, match=r"dimension must be in 1\.\.384"):
        orthogonal_rows(385, 384, seed=0)


def test_variant_is_a_real_reproducible_model_with_its_own_fingerprint(
    spec: ModelSpec, tmp_path: Path
) -> None:
    first = load_spec(str(build_projected_model(spec.path, tmp_path / "a", seed=16)))
    again = load_spec(str(build_projected_model(spec.path, tmp_path / "b", seed=16)))
    other = load_spec(str(build_projected_model(spec.path, tmp_path / "c", seed=17)))
    assert (first.dimension, first.head, first.normalize) == (256, ("Pooling", "Dense", "Normalize"), True)
    assert first.fingerprint.split("@")[1] == again.fingerprint.split("@")[1]
    assert len({spec.fingerprint, first.fingerprint, other.fingerprint.replace("c@", "a@")}) == 3
    with pytest.raises(ValueError, match="not empty"):
        build_projected_model(spec.path, tmp_path / "a")

    base = _vectors(spec, TEXTS)
    variant = _vectors(first, TEXTS)
    assert variant.shape == (3, 256)
    # Exactly the base model's vectors projected and renormalized.
    expected = l2_normalize(base @ orthogonal_rows(256, 384, seed=16).T)
    np.testing.assert_allclose(variant, expected, atol=1e-5)
    # Still a model of meaning, with scores of its own.
    cos = variant @ variant.T
    assert cos[0, 1] > cos[0, 2] + 0.5
    assert abs(float(cos[0, 1]) - 0.7553) > 1e-3
