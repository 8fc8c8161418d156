"""The server's EdgeProjection (server.app protocol): the edge bundle's projection, and where the
server gets the vectors to fit it on.

SyncVectors projects stored full-dimension vectors with exactly the numpy code the edge runs
after its own encoder (embedcore.Projection), so a synced vector equals the edge's own.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from embedcore import EdgeBundle, Projection, fit_pca_rotation

log = logging.getLogger(__name__)

FIT_KINDS = ("adaptor", "rotation")  # what the server can fit (--edge-projection)


class BundleProjection:
    """Implements server.app.EdgeProjection for one bundle."""

    def __init__(self, bundle: EdgeBundle) -> None:
        self.bundle = bundle
        self.fingerprint = bundle.fingerprint
        self.default_dims = bundle.manifest.default_dims
        self.projection = bundle.projection
        self.max_dims = bundle.projection.max_dims  # widest edge vector this bundle produces

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


def sample_store_documents(
    store: Any, limit: int, fingerprint: str
) -> tuple[np.ndarray | None, list[str | None]]:
    """Like :func:`sample_store_vectors`, with each vector's stored text (None where the store
    keeps no text, or cannot say: then every text is None)."""
    if store is not None and getattr(store, "sample_documents", None) is not None:
        vectors, texts = store.sample_documents(limit, fingerprint=fingerprint)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 2 and len(vectors):
            return vectors, list(texts)
        return None, []
    only = sample_store_vectors(store, limit, fingerprint)
    return only, [None] * (0 if only is None else len(only))


def fit_projection(
    vectors: np.ndarray | None,
    dimensions: int,
    *,
    min_vectors: int,
    kind: str = "adaptor",
    pseudo_queries: np.ndarray | None = None,
    out_dims: int = 0,
    adaptor_min_docs: int = 0,
) -> Projection:
    """``kind`` ("adaptor": linear Matryoshka adaptor, server.edge_adaptor; "rotation": PCA)
    fitted on ``vectors`` (corpus vectors only; ``pseudo_queries``: vectors of corpus sentences,
    extra adaptor anchors) when there are at least ``min_vectors``; else identity (plain
    truncation), which the server refits once the store holds enough. An adaptor needs
    ``adaptor_min_docs`` vectors (0: server.edge_adaptor.MIN_FIT_DOCS); with fewer the PCA
    rotation is fitted instead, and likewise without ``pseudo_queries`` (the returned kind says
    which). ``out_dims``: the adaptor's
    outputs (0: OUT_DIMS)."""
    if kind not in FIT_KINDS:
        raise ValueError(f"unknown edge projection kind {kind!r} (expected one of {', '.join(FIT_KINDS)})")
    if vectors is None or len(vectors) < min_vectors:
        n = 0 if vectors is None else len(vectors)
        log.info("edge projection: identity (%d vectors to fit on, need %d)", n, min_vectors)
        return Projection.identity(dimensions)
    from server.edge_adaptor import MIN_FIT_DOCS, OUT_DIMS, fit_adaptor

    adaptor_min_docs = adaptor_min_docs or MIN_FIT_DOCS
    if kind == "adaptor" and len(vectors) < adaptor_min_docs:
        log.info(
            "edge projection: %d vectors, the adaptor needs %d: PCA rotation", len(vectors), adaptor_min_docs
        )
        kind = "rotation"
    if kind == "adaptor" and (pseudo_queries is None or not len(pseudo_queries)):
        # Fitted on documents alone the adaptor loses to PCA at the default 128 dims (SciFact
        # through the edge: 0.624 vs 0.632): it needs query-like anchors from stored texts.
        log.info("edge projection: no pseudo-queries (no stored texts) for the adaptor: PCA rotation")
        kind = "rotation"
    if kind == "rotation":
        log.info("edge projection: PCA rotation fitted on %d vectors", len(vectors))
        return fit_pca_rotation(vectors)

    return Projection.adaptor(fit_adaptor(vectors, pseudo_queries, out_dims=out_dims or OUT_DIMS))
