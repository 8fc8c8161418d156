"""Full-dimension vectors -> edge vectors: rotation (or adaptor), truncation, renormalization.

The server's SyncVectors and the edge encoder both call :meth:`Projection.apply`, so a synced
vector equals what the edge computes for the same text. Numpy only.

Kinds (the ``kind`` array of the .npz file):
- ``identity``: plain Matryoshka truncation (models trained with MRL).
- ``rotation``: an orthogonal matrix (PCA directions, largest variance first). Full-dimension
  similarities are unchanged; the leading dimensions carry the most variance, so truncating
  after it loses far less than truncating the raw vector.
- ``adaptor``: a linear Matryoshka adaptor, a (dimensions, out_dims) matrix (out_dims <=
  dimensions) trained so that every prefix of its output ranks neighbours like the full vector
  does (server/edge_adaptor.py fits it). Same code path as the rotation; only its first
  ``out_dims`` outputs exist, so ``dims`` is at most ``out_dims`` (:attr:`Projection.max_dims`).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedcore.pooling import l2_normalize

KINDS = ("identity", "rotation", "adaptor")


@dataclass(frozen=True)
class Projection:
    kind: str
    dimension: int  # full model dimension (input width)
    matrix: np.ndarray | None = None  # (dimensions, dimensions) "rotation", (dimensions, out) "adaptor"

    @property
    def max_dims(self) -> int:
        """The most edge dimensions this projection can produce."""
        return self.dimension if self.matrix is None else int(self.matrix.shape[1])

    def apply(self, vectors: np.ndarray, dims: int) -> np.ndarray:
        """(n, dimensions) -> (n, dims) float32, unit length."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dimension:
            raise ValueError(f"expected vectors of shape (n, {self.dimension}), got {x.shape}")
        if not 0 < dims <= self.max_dims:
            why = (
                f" (this {self.kind} projection has {self.max_dims} outputs)"
                if self.max_dims < self.dimension
                else ""
            )
            raise ValueError(f"dims must be in 1..{self.max_dims}{why}, got {dims}")
        # Projection then truncation: only the first ``dims`` columns of the matrix are needed.
        x = x @ self.matrix[:, :dims] if self.matrix is not None else x[:, :dims]
        return l2_normalize(x)

    def to_bytes(self) -> bytes:
        """A deterministic .npz serialization (same projection -> same bytes -> same hash)."""
        buf = io.BytesIO()
        arrays: dict[str, np.ndarray] = {
            "kind": np.array(self.kind),
            "dimensions": np.array(self.dimension, dtype=np.int64),
        }
        if self.matrix is not None:
            arrays["matrix"] = np.ascontiguousarray(self.matrix, dtype=np.float32)
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def identity(cls, dimension: int) -> Projection:
        return cls("identity", dimension)

    @classmethod
    def load(cls, path: Path) -> Projection:
        return cls.load_bytes(path.read_bytes(), source=str(path))

    @classmethod
    def load_bytes(cls, raw: bytes, *, source: str = "projection") -> Projection:
        path = source
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            kind = str(data["kind"])
            if kind not in KINDS:
                raise ValueError(f"{path}: unknown projection kind {kind!r}")
            dims = int(data["dimensions"])
            matrix = np.asarray(data["matrix"], dtype=np.float32) if "matrix" in data else None
        if kind == "rotation" and (matrix is None or matrix.shape != (dims, dims)):
            raise ValueError(f"{path}: rotation matrix must be ({dims}, {dims})")
        if kind == "adaptor" and (
            matrix is None or matrix.ndim != 2 or matrix.shape[0] != dims or not 0 < matrix.shape[1] <= dims
        ):
            got = None if matrix is None else matrix.shape
            raise ValueError(f"{path}: adaptor matrix must be ({dims}, out_dims <= {dims}), got {got}")
        if kind == "identity" and matrix is not None:
            raise ValueError(f"{path}: an identity projection has no matrix")
        return cls(kind, dims, matrix)

    @classmethod
    def adaptor(cls, matrix: np.ndarray) -> Projection:
        """A fitted adaptor matrix (dimensions, out_dims) as a projection (validated like a load)."""
        m = np.ascontiguousarray(matrix, dtype=np.float32)
        return cls.load_bytes(cls("adaptor", int(m.shape[0]), m).to_bytes(), source="adaptor")


def pca_directions(vectors: np.ndarray, out_dims: int | None = None) -> np.ndarray:
    """(d, out_dims) eigenvectors of the centred covariance of ``vectors`` (n, d), largest
    eigenvalue first, each with its largest-magnitude component positive (deterministic signs).
    ``out_dims`` defaults to d (the full orthogonal rotation)."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError("need at least 2 vectors to fit PCA directions")
    centred = x - x.mean(axis=0, keepdims=True)
    values, vecs = np.linalg.eigh(centred.T @ centred / x.shape[0])
    vecs = vecs[:, np.argsort(values)[::-1][: out_dims or x.shape[1]]]
    signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(vecs.shape[1])])
    signs[signs == 0] = 1.0
    return np.asarray(vecs * signs, dtype=np.float32)


def fit_pca_rotation(vectors: np.ndarray) -> Projection:
    """Orthogonal PCA rotation of ``vectors`` (n, d): :func:`pca_directions` for all d.

    With fewer vectors than dimensions the trailing directions are an arbitrary orthonormal
    completion; they only matter for dims above the sample's rank.
    """
    matrix = pca_directions(vectors)
    return Projection("rotation", matrix.shape[0], matrix)
