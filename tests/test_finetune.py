"""``embed-server finetune``: pairs from a collection's own texts, a Matryoshka fine-tune, a model
the server and the edge load. A temporary store holds short SciFact fixture documents (title +
first sentences, embedded by the real model) plus planted near-duplicates and exact copies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.finetune import FinetuneConfig, finetune_collection, mine_pairs, read_corpus
from server.finetune.pairs import make_batches, near_duplicate_groups, pseudo_queries, sentences_of
from server.model import ModelSpec, load_spec
from tests._collections import scifact_docs

COLLECTION = "ft"
DOCS = 36
NEAR_DUPLICATE = 0.95
TINY = {  # a handful of small steps: the test checks the machinery, not the quality
    "max_steps": 2,
    "batch_size": 4,
    "max_tokens": 32,
    "validation_queries": 4,
    "validation_documents": 12,
    "seed": 7,
}


def _short(text: str, title: str) -> str:
    """Title + the first three sentences: real text, cheap to embed."""
    return " ".join([title, *sentences_of(text, title)[:3]]).strip()


@pytest.fixture(scope="module")
def st_model(spec: ModelSpec) -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(spec.path), device="cpu")
    model.max_seq_length = spec.max_tokens
    return model


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, spec: ModelSpec, st_model: Any) -> Path:
    """A real LMDB store: DOCS documents, 4 near-duplicates (a sentence appended) and 2 exact
    copies under other ids, with vectors from the real model."""
    from server.store import Upsert, content_hash, open_store

    docs = [(i, _short(text, str(meta.get("title", ""))), meta) for i, text, meta in scifact_docs(DOCS)]
    docs += [(f"{i}-revised", text + " This version was revised.", meta) for i, text, meta in docs[:4]]
    docs += [(f"{i}-copy", text, meta) for i, text, meta in docs[4:6]]
    vectors = st_model.encode([t for _, t, _ in docs], convert_to_numpy=True, normalize_embeddings=True)
    data = tmp_path_factory.mktemp("finetune") / "data"
    store = open_store(data)
    try:
        upserts = [
            Upsert(COLLECTION, i, content_hash(spec.fingerprint, "", t), t, m, np.asarray(v, np.float32))
            for (i, t, m), v in zip(docs, vectors, strict=True)
        ]
        store.upsert(upserts, fingerprint=spec.fingerprint, dimension=spec.dimension)
    finally:
        store.close()
    return data


def _corpus(data_dir: Path, spec: ModelSpec) -> Any:
    from server.store import open_store

    store = open_store(data_dir)
    try:
        return read_corpus(store, COLLECTION, spec)
    finally:
        store.close()


def test_pairs_never_use_a_near_duplicate_or_a_copy_of_the_positive_as_negative(
    data_dir: Path, spec: ModelSpec, st_model: Any
) -> None:
    corpus = _corpus(data_dir, spec)
    assert len(corpus) == DOCS + 6
    queries = pseudo_queries(corpus, range(len(corpus)), per_doc=2, seed=0)
    assert queries and all(q.text in corpus.texts[q.doc] for q in queries)
    query_vectors = st_model.encode(
        [q.text for q in queries], convert_to_numpy=True, normalize_embeddings=True
    )
    options: dict[str, Any] = {"num_negatives": 2, "remove_query_prob": 0.5, "seed": 0}

    pairs, stats = mine_pairs(
        corpus,
        queries,
        query_vectors,
        near_duplicate_cosine=NEAR_DUPLICATE,
        max_negative_ratio=0.95,
        **options,
    )
    assert pairs and stats.pairs == len(pairs)
    # The planted duplicates were there to be picked, and were filtered out.
    assert stats.near_duplicates_skipped > 0 and stats.same_content_skipped > 0, stats.to_json()
    for pair in pairs:
        positive = corpus.vectors[pair.doc]
        for negative in pair.negatives:
            assert negative != pair.doc
            assert corpus.hashes[negative] != corpus.hashes[pair.doc]
            assert float(corpus.vectors[negative] @ positive) < NEAR_DUPLICATE
    # Without the filters (near-duplicates; scores close to the positive's) the same mining
    # does pick them: the checks above are not vacuous.
    unfiltered, _ = mine_pairs(
        corpus, queries, query_vectors, near_duplicate_cosine=1.01, max_negative_ratio=1.0, **options
    )
    assert any(
        float(corpus.vectors[n] @ corpus.vectors[p.doc]) >= NEAR_DUPLICATE
        for p in unfiltered
        for n in p.negatives
    )

    # In-batch negatives too: no batch holds two pairs whose documents are near-duplicates.
    groups = near_duplicate_groups(corpus, [r for p in pairs for r in (p.doc, *p.negatives)], NEAR_DUPLICATE)
    batches = make_batches(pairs, 8, groups, seed=0)
    assert batches and all(len(b) == 8 for b in batches)
    for batch in batches:
        docs = [r for i in batch for r in (pairs[i].doc, *pairs[i].negatives)]
        vectors = corpus.vectors[docs]
        owner = np.repeat(np.arange(len(batch)), [1 + len(pairs[i].negatives) for i in batch])
        close = (vectors @ vectors.T >= NEAR_DUPLICATE) & (owner[:, None] != owner[None, :])
        assert not close.any()


@pytest.fixture(scope="module")
def finetuned(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same tiny fine-tune twice with one seed: through the CLI, then through Python."""
    from server.cli import main

    root = tmp_path_factory.mktemp("models")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    flags = [f.replace("--learning-rate", "--lr") for f in flags]
    cli_out, api_out = root / "cli", root / "api"
    argv = ["finetune", COLLECTION, "--out", str(cli_out), "--data-dir", str(data_dir), "--quiet", *flags]
    assert main(argv) == 0
    finetune_collection(data_dir, COLLECTION, api_out, FinetuneConfig(**TINY), progress=False)  # type: ignore[arg-type]
    return cli_out, api_out


def _weights(model_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return dict(load_file(str(model_dir / "model.safetensors")))


def test_finetuned_model_is_new_declares_its_dims_and_is_deterministic(
    finetuned: tuple[Path, Path], spec: ModelSpec
) -> None:
    import torch

    cli_out, api_out = finetuned
    tuned = load_spec(str(cli_out))
    assert tuned.fingerprint != spec.fingerprint
    assert tuned.matryoshka_dims == (384, 256, 128, 64, 32)
    assert (tuned.dimension, tuned.max_tokens, tuned.pooling, tuned.normalize) == (384, 256, "mean", True)
    # name@hash: the name is the folder's, the hash covers weights and configs.
    assert load_spec(str(api_out)).fingerprint.split("@")[1] == tuned.fingerprint.split("@")[1]

    first, second, base = _weights(cli_out), _weights(api_out), _weights(spec.path)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)  # same seed, same weights
    assert any(not torch.equal(first[k], base[k]) for k in base if k in first)  # it did train

    record = json.loads((cli_out / "finetune.json").read_text())
    assert record["result"]["training"]["steps"] == 2
    assert record["result"]["base_fingerprint"] == spec.fingerprint
    validation = record["result"]["validation"]
    assert validation["queries"] == 4 and set(validation["base"]) == {"384", "256", "128", "64", "32"}


def test_server_torch_backend_and_edge_bundle_run_the_finetuned_model(
    finetuned: tuple[Path, Path], spec: ModelSpec, st_model: Any, tmp_path: Path
) -> None:
    from embedcore import ModelTokenizer, Projection, l2_normalize, pad_token_id, tokenize_batch
    from server.edge_bundle import build_bundle
    from server.onnx_export import ensure_onnx
    from server.pool.backends import BackendConfig, load_backend

    tuned = load_spec(str(finetuned[0]))
    texts = ["Aspirin lowers the risk of heart attacks.", "T cells recognise peptide-MHC ligands. " * 40]
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(tuned.path), device="cpu").encode(texts, convert_to_numpy=True)
    backend = load_backend(tuned, BackendConfig("torch", "cpu", "float32", 1))
    bundle = build_bundle(
        tuned,
        tmp_path / "bundle",
        Projection.identity(tuned.dimension),  # plain truncation: the model is MRL-trained
        default_dims=64,
        onnx_dir=ensure_onnx(tuned, tmp_path / "onnx"),
    )
    tokenizer = ModelTokenizer(tuned.path / "tokenizer.json", max_tokens=tuned.max_tokens)
    tokens = tokenize_batch(tokenizer, texts, pad_id=pad_token_id(tokenizer.counter))
    # Backends return the pipeline before its final Normalize; the pool normalizes.
    served = l2_normalize(backend.forward(tokens.input_ids, tokens.attention_mask, tokens.token_type_ids))
    assert served.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    assert float(np.abs(served - reference).max()) <= 1e-5
    base = st_model.encode(texts, convert_to_numpy=True)
    assert float(np.abs(served - base).max()) > 1e-4  # the fine-tuned weights, not the base's

    # The edge: fp32 ONNX equals torch, int8 stays close, and the dims are the model's own.
    assert bundle.manifest.model_fingerprint == tuned.fingerprint
    assert bundle.manifest.matryoshka_dims == (32, 64, 128, 256, 384)
    onnx = bundle.encoder(int8=False).encode(texts)
    assert float(np.abs(onnx - reference).max()) <= 1e-5
    int8 = bundle.encoder(int8=True).encode(texts)
    assert float((int8 * reference).sum(axis=1).min()) >= 0.97


def test_cli_refuses_an_unknown_collection_a_used_out_dir_and_bad_dims(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli import main

    out = tmp_path / "model"
    assert main(["finetune", "nope", "--out", str(out), "--data-dir", str(data_dir)]) == 2
    assert f"no collection 'nope' in the store (collections: {COLLECTION})" in capsys.readouterr().err
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["finetune", COLLECTION, "--out", str(out), "--data-dir", str(data_dir)]) == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert main(["finetune", COLLECTION, "--out", str(tmp_path / "m2"), "--dims", "512,64"]) == 2
    assert "dims must be in 1..384 (the model's width), got [512, 64]" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists()
