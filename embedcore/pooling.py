"""Pooling and normalization of token vectors in numpy (torch-free), as sentence-transformers does."""

from __future__ import annotations

import numpy as np

# The modes pool() computes; a bundle's pooling may also name other sentence-transformers modes
# or a "+"-joined combination, which only graphs with the head inside them (format 2) carry.
PoolingMode = str
NUMPY_MODES = ("cls", "mean", "max", "lasttoken")


def pool(hidden: np.ndarray, attention_mask: np.ndarray, mode: PoolingMode) -> np.ndarray:
    """(batch, seq, dim) token vectors + (batch, seq) mask -> (batch, dim) float32."""
    mask = attention_mask.astype(hidden.dtype)[:, :, None]
    if mode == "cls":
        out = hidden[:, 0]
    elif mode == "mean":
        out = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    elif mode == "max":
        out = np.where(mask > 0, hidden, np.finfo(hidden.dtype).min).max(axis=1)
    elif mode == "lasttoken":
        last = attention_mask.sum(axis=1).astype(np.int64) - 1  # right padding
        out = hidden[np.arange(hidden.shape[0]), np.clip(last, 0, None)]
    else:
        raise ValueError(f"unknown pooling mode {mode!r}")
    return np.asarray(out, dtype=np.float32)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.asarray(vectors / np.clip(norms, 1e-12, None), dtype=np.float32)


def truncate_dims(vectors: np.ndarray, dims: int) -> np.ndarray:
    """Matryoshka truncation: keep the first ``dims`` components, then renormalize."""
    return l2_normalize(np.asarray(vectors)[..., :dims])
