"""Adding vectors to a usearch HNSW graph so that every one of them can be found again.

usearch's multi-threaded ``Index.add`` races (unum-cloud/USearch issue #735, open in 2.26): a
node can be stored yet have no in-edge, so no graph walk reaches it at any ``expansion_search``
and a search for its own vector returns other documents. Measured here on 140 SciFact vectors
added in three batches (40, 96, 4): 84 of 300 fresh indexes stranded a node; the same adds with
``threads=1`` stranded none in 300. Single-threaded adds cost 2.4x the time on 2 cores (more on
bigger hosts), so :func:`add_reachable` adds in parallel, then probes every new vector with a
search for itself and re-inserts the few stranded ones alone (on 20,000 random vectors: 16
stranded, probe +60 % of the add time).
"""

from __future__ import annotations

import numpy as np

# onnxruntime before usearch: the other order segfaults (see server/app.py).
import onnxruntime  # noqa: F401

from usearch.index import Index  # isort: skip

_PROBE = 4  # results per self-search: room for ties with other vectors at the same distance
_TIE = 1e-3  # distance at which another vector counts as tied with the probe's own (cos, hamming)
_ROUNDS = 3  # a single-threaded re-insert links its node; more rounds only guard against surprises


def stranded(index: Index, keys: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Bool mask over ``keys`` (n,): True where a graph search for the key's own vector (n, d)
    finds neither the key nor ``_PROBE`` vectors tied with it (distance <= ``_TIE``)."""
    count = min(_PROBE, len(index))
    if count == 0 or len(keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    found = index.search(vectors, count)
    found_keys = np.asarray(found.keys).reshape(len(keys), -1)
    distances = np.asarray(found.distances, dtype=np.float64).reshape(len(keys), -1)
    # One query answers a Matches (no .counts); a batch, BatchMatches.
    counts = np.asarray(getattr(found, "counts", [len(found.keys)])).reshape(-1)
    hit = (found_keys == keys[:, None]).any(axis=1)
    tied = (counts == count) & (distances[:, -1] <= _TIE)
    missing: np.ndarray = ~(hit | tied)
    return missing


def add_reachable(index: Index, keys: np.ndarray, vectors: np.ndarray) -> int:
    """``index.add(keys, vectors)`` (keys (n,) uint64 not in the index; vectors (n, d) in the
    index's input type), then re-insert single-threaded every vector a self-search cannot find.
    Returns how many re-insertions were needed (0 nearly always)."""
    keys = np.asarray(keys, dtype=np.uint64)
    if len(keys) == 0:
        return 0
    index.add(keys, vectors)
    reinserted = 0
    bad = stranded(index, keys, vectors)
    for _ in range(_ROUNDS):
        if not bad.any():
            break
        keys, vectors = keys[bad], vectors[bad]
        index.remove(keys)
        index.add(keys, vectors, threads=1)
        reinserted += len(keys)
        bad = stranded(index, keys, vectors)
    return reinserted
