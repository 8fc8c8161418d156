"""The server's EdgeProjection (server.app protocol): the edge bundle's projection, and where the
server gets the vectors to fit it on.

SyncVectors projects stored full-dimension vectors with exactly the numpy code the edge runs
after its own encoder (edge_client._projection), so a synced vector equals the edge's own.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edge_client._bundle import EdgeBundle
from edge_client._projection import Projection, fit_pca_rotation

log = logging.getLogger(__name__)


class BundleProjection:
    """Implements server.app.EdgeProjection for one bundle."""

    def __init__(self, bundle: EdgeBundle) -> None:
        self.bundle = bundle
        self.fingerprint = bundle.fingerprint
        self.default_dims = bundle.manifest.default_dims
        self.projection = bundle.projection

    def project(self, vectors: np.ndarray, dims: int) -> np.ndarray:
        """(n, full dims) float32 -> (n, dims) float32, renormalized; 0 means the default."""
        return self.projection.apply(vectors, dims or self.default_dims)


def sample_store_vectors(store: Any, limit: int, fingerprint: str) -> np.ndarray | None:
    """Up to ``limit`` stored full-dimension vectors of the model ``fingerprint`` (all
    collections), or None if the store cannot say. Uses the store's ``sample_vectors``."""
    if store is None:
        return None
    sample = getattr(store, "sample_vectors", None)
    if sample is None:
        log.warning("the store has no sample_vectors(); the edge projection cannot be fitted on it")
        return None
    vectors = np.asarray(sample(limit, fingerprint=fingerprint), dtype=np.float32)
    return vectors if vectors.ndim == 2 and len(vectors) else None


def fit_projection(vectors: np.ndarray | None, dimensions: int, *, min_vectors: int) -> Projection:
    """PCA rotation when there are at least ``min_vectors`` vectors, else identity (plain
    truncation), which the server refits once the store holds enough."""
    if vectors is None or len(vectors) < min_vectors:
        n = 0 if vectors is None else len(vectors)
        log.info("edge projection: identity (%d vectors to fit on, need %d)", n, min_vectors)
        return Projection.identity(dimensions)
    log.info("edge projection: PCA rotation fitted on %d vectors", len(vectors))
    return fit_pca_rotation(vectors)
