"""ONNX export parity: the edge's fp32 graph reproduces the server's torch vectors; int8 stays close."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedcore import EdgeBundle
from server.model import ModelSpec

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
    "short",
    "Éè ü naïve café — unicode and punctuation!?",
    "word " * 400,  # longer than the model's 256 tokens: truncated the same way on both sides
    "Vector search embeds documents and queries and returns the closest ones. " * 5,
]


@pytest.fixture(scope="module")
def torch_vectors(spec: ModelSpec) -> np.ndarray:
    """What the server computes at float32 (sentence-transformers, max_seq_length = 256)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(spec.path), device="cpu")
    model.max_seq_length = spec.max_tokens
    return np.asarray(model.encode(TEXTS, convert_to_numpy=True, batch_size=4), dtype=np.float32)


def test_fp32_onnx_matches_torch(edge_bundle: EdgeBundle, torch_vectors: np.ndarray) -> None:
    onnx = edge_bundle.encoder(int8=False).encode(TEXTS)
    assert onnx.shape == torch_vectors.shape == (len(TEXTS), 384)
    assert float(np.abs(onnx - torch_vectors).max()) <= 1e-5


def test_int8_onnx_is_close(edge_bundle: EdgeBundle, torch_vectors: np.ndarray) -> None:
    int8 = edge_bundle.encoder(int8=True).encode(TEXTS)
    cosines = (int8 * torch_vectors).sum(axis=1)
    assert float(cosines.mean()) >= 0.99
    assert float(cosines.min()) >= 0.97


def test_golden_values_and_known_similarities(edge_bundle: EdgeBundle) -> None:
    vectors = edge_bundle.encoder(int8=False).encode(TEXTS[:3])
    golden = [0.03324159, 0.00440608, -0.00627699, 0.04837868, -0.13870227]
    assert np.allclose(vectors[0, :5], golden, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) == pytest.approx(0.7553, abs=1e-3)
    assert float(vectors[0] @ vectors[2]) == pytest.approx(-0.0461, abs=1e-3)


def test_batch_composition_does_not_change_vectors(edge_bundle: EdgeBundle) -> None:
    """Padding to the longest in the batch must not leak into shorter rows."""
    encoder = edge_bundle.encoder(int8=False)
    alone = encoder.encode([TEXTS[4]])
    in_batch = encoder.encode(TEXTS)[4:5]
    assert float(np.abs(alone - in_batch).max()) <= 1e-5


def test_bundle_tokenizer_truncates_at_max_tokens_without_fixed_padding(
    edge_bundle: EdgeBundle, spec: ModelSpec
) -> None:
    config = json.loads((edge_bundle.directory / edge_bundle.manifest.tokenizer).read_text())
    assert config["truncation"]["max_length"] == spec.max_tokens == 256
    assert config["padding"] is None
    shipped = json.loads((spec.path / "tokenizer.json").read_text())
    assert shipped["truncation"]["max_length"] == 128  # the trap this file avoids


def test_onnx_graph_has_dynamic_axes(edge_bundle: EdgeBundle) -> None:
    session = edge_bundle.encoder(int8=False).model.session
    hidden, pooled = session.get_outputs()
    assert (hidden.name, pooled.name) == ("last_hidden_state", "sentence_embedding")
    assert [str(d) for d in hidden.shape] == ["batch", "sequence", "384"]
    assert [str(d) for d in pooled.shape] == ["batch", "384"]
    assert {i.name for i in session.get_inputs()} == {"input_ids", "attention_mask", "token_type_ids"}
