"""embedcore.ann.add_reachable: every vector added to a usearch graph is found again by a search
for itself (usearch's parallel add can strand a node: unum-cloud/USearch issue #735).

Real model vectors (SciFact fixture, through the edge bundle's ONNX model), added in the batch
sizes an ingest produced when CI caught the fault (40, 96, 4): without the probe, 84 of 300
fresh 384-dim indexes stranded one of the 140 here (20 of 60 at the 128 dims used below)."""

from __future__ import annotations

import numpy as np
import pytest

# onnxruntime before usearch (conftest imports it first too)
from usearch.index import Index

from embedcore import EdgeBundle
from embedcore.ann import add_reachable, stranded
from tests._collections import scifact_docs

BATCHES = (40, 96, 4)
TRIALS = 60


@pytest.fixture(scope="module")
def vectors(edge_bundle: EdgeBundle) -> np.ndarray:
    texts = [text for _, text, _ in scifact_docs(sum(BATCHES), skip=260)]
    return np.asarray(edge_bundle.embed(texts, 128, kind="document"), dtype=np.float32)


@pytest.mark.parametrize(("dtype", "metric"), [("f16", "cos"), ("i8", "cos"), ("b1", "hamming")])
def test_every_added_vector_finds_itself(vectors: np.ndarray, dtype: str, metric: str) -> None:
    rows = np.packbits(vectors > 0, axis=1) if dtype == "b1" else vectors
    keys = np.arange(len(rows), dtype=np.uint64)
    lost = []
    for trial in range(TRIALS):
        index = Index(ndim=vectors.shape[1], metric=metric, dtype=dtype)
        start = 0
        for size in BATCHES:
            add_reachable(index, keys[start : start + size], rows[start : start + size])
            start += size
        assert len(index) == len(rows)
        assert not stranded(index, keys, rows).any()
        found = np.asarray(index.search(rows, 1).keys).reshape(-1)
        # b1: distinct texts may share a sign pattern; then either key is a right answer
        for key, hit in zip(keys, found, strict=True):
            if hit != key and not (dtype == "b1" and np.array_equal(rows[hit], rows[key])):
                lost.append((trial, int(key), int(hit)))
    assert lost == []


def test_a_key_the_walk_does_not_return_is_reported(vectors: np.ndarray) -> None:
    """stranded() is True for a key a search for its vector does not return (here: keys the
    graph never held, as a stranded node looks to a walk), False for every reachable one."""
    index = Index(ndim=vectors.shape[1], metric="cos", dtype="f16")
    keys = np.arange(len(vectors), dtype=np.uint64)
    index.add(keys[:100], vectors[:100], threads=1)
    assert not stranded(index, keys[:100], vectors[:100]).any()
    assert stranded(index, keys[100:], vectors[100:]).all()
