"""The local vector index: usearch for vectors, sqlite for ids, texts and sync state.

dtypes: ``f16`` (default, metric cos), ``i8`` (metric cos: ip would give unscaled distances),
``b1`` (packed sign bits, metric hamming; candidates are rescored with f16 vectors kept in a
second index beside it). Saves are atomic (write a temp file, then rename); the index is
reopened from disk in memory on start (never a memory-mapped view: adding to a view segfaults).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# onnxruntime must be loaded before usearch: the other order segfaults the process.
import onnxruntime  # noqa: F401

from usearch.index import Index  # isort: skip

from edge_client.errors import LocalIndexError

DTYPES = ("f16", "i8", "b1")
RESCORE_MULTIPLIER = 8  # b1 candidates per result, rescored with f16


def key_of(doc_id: str) -> int:
    """A stable 63-bit usearch key for a document id (same id -> same key, no allocation)."""
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") >> 1


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    text: str
    metadata: dict[str, Any]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (key INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, text TEXT,
    metadata TEXT, source TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class LocalIndex:
    """One collection's local index in ``directory``. Not thread-safe: one writer at a time."""

    def __init__(self, directory: Path, *, dims: int, dtype: str = "f16") -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(directory / "docs.sqlite")
        self.db.executescript(_SCHEMA)
        stored_dims, stored_dtype = self.get_state("dims"), self.get_state("dtype")
        if stored_dims and (int(stored_dims) != dims or stored_dtype != dtype):
            # Another layout on disk: the caller asked for a different one, so start afresh.
            self._wipe()
        self.dims, self.dtype = dims, dtype
        self.set_state("dims", str(dims))
        self.set_state("dtype", dtype)
        self.db.commit()
        self.index = self._open(self._path(dtype), dtype)
        self.rescore = self._open(self._path("f16"), "f16") if dtype == "b1" else None

    # --- files -------------------------------------------------------------------------------
    def _path(self, dtype: str) -> Path:
        return self.directory / f"vectors.{dtype}.usearch"

    def _new(self, dtype: str) -> Index:
        metric = "hamming" if dtype == "b1" else "cos"
        return Index(ndim=self.dims, metric=metric, dtype=dtype)

    def _open(self, path: Path, dtype: str) -> Index:
        index = self._new(dtype)
        if path.exists():
            try:
                index.load(str(path))
            except Exception as exc:  # usearch raises RuntimeError/ValueError on a bad file
                raise LocalIndexError(f"cannot load {path}: {exc}; delete it and sync again") from exc
        return index

    def _wipe(self) -> None:
        self.db.execute("DELETE FROM docs")
        self.db.execute("DELETE FROM state")
        self.db.commit()
        for dtype in DTYPES:
            self._path(dtype).unlink(missing_ok=True)

    def reset(self) -> None:
        """Drop every vector, document and sync state (a changed bundle needs a full resync)."""
        self._wipe()
        self.set_state("dims", str(self.dims))
        self.set_state("dtype", self.dtype)
        self.db.commit()
        self.index = self._new(self.dtype)
        self.rescore = self._new("f16") if self.dtype == "b1" else None

    def save(self) -> None:
        """Write the index files atomically, then commit the documents and state."""
        for index, dtype in ((self.index, self.dtype), (self.rescore, "f16")):
            if index is None:
                continue
            fd, tmp = tempfile.mkstemp(prefix=".vectors.", suffix=".tmp", dir=self.directory)
            os.close(fd)
            try:
                index.save(tmp)
                os.replace(tmp, self._path(dtype))
            finally:
                Path(tmp).unlink(missing_ok=True)
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    # --- state -------------------------------------------------------------------------------
    def get_state(self, name: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else default

    def set_state(self, name: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO state (name, value) VALUES (?, ?)", (name, value))

    def __len__(self) -> int:
        return len(self.index)

    # --- writes ------------------------------------------------------------------------------
    def _vectors_for(self, vectors: np.ndarray, dtype: str) -> np.ndarray:
        if dtype == "b1":
            return np.packbits(vectors > 0, axis=1)
        return vectors

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        texts: Sequence[str],
        metadata: Sequence[dict[str, Any]],
        *,
        source: str,
    ) -> None:
        """Add or replace documents (vectors: (n, dims) unit-length float32)."""
        if not ids:
            return
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dims):
            raise ValueError(f"expected vectors of shape ({len(ids)}, {self.dims}), got {vectors.shape}")
        # The last occurrence of an id in one batch wins, as it would applied one by one.
        last = {doc_id: i for i, doc_id in enumerate(ids)}
        rows = sorted(last.values())
        keys = np.array([key_of(ids[i]) for i in rows], dtype=np.uint64)
        self._remove_keys(keys)  # usearch add() of an existing key raises: update = remove + add
        batch = vectors[rows]
        self.index.add(keys, self._vectors_for(batch, self.dtype))
        if self.rescore is not None:
            self.rescore.add(keys, batch)
        self.db.executemany(
            "INSERT OR REPLACE INTO docs (key, id, text, metadata, source) VALUES (?, ?, ?, ?, ?)",
            [
                (int(k), ids[i], texts[i], json.dumps(metadata[i], sort_keys=True), source)
                for k, i in zip(keys, rows, strict=True)
            ],
        )

    def delete(self, ids: Sequence[str]) -> int:
        keys = np.array([key_of(i) for i in ids], dtype=np.uint64)
        removed = self._remove_keys(keys)
        self.db.executemany("DELETE FROM docs WHERE key = ?", [(int(k),) for k in keys])
        return removed

    def _remove_keys(self, keys: np.ndarray) -> int:
        if not len(keys) or not len(self.index):
            return 0
        present = keys[np.asarray(self.index.contains(keys), dtype=bool).reshape(-1)]
        for index in (self.index, self.rescore):
            if index is not None and len(present):
                index.remove(present)
        return len(present)

    # --- reads -------------------------------------------------------------------------------
    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        """Best ``k`` documents for one unit-length query vector, best first (score = cosine)."""
        if not len(self.index) or k <= 0:
            return []
        query = np.asarray(vector, dtype=np.float32).reshape(1, self.dims)
        if self.rescore is None:
            found = self.index.search(self._vectors_for(query, self.dtype), k)
            keys = np.asarray(found.keys).reshape(-1)
            scores = 1.0 - np.asarray(found.distances, dtype=np.float32).reshape(-1)
        else:
            found = self.index.search(self._vectors_for(query, "b1"), k * RESCORE_MULTIPLIER)
            candidates = np.asarray(found.keys, dtype=np.uint64).reshape(-1)
            stored = np.asarray(self.rescore.get(candidates), dtype=np.float32).reshape(len(candidates), -1)
            exact = stored @ query[0]
            best = np.argsort(-exact, kind="stable")[:k]
            keys, scores = candidates[best], exact[best]
        return self._hits(keys, scores)

    def _hits(self, keys: np.ndarray, scores: np.ndarray) -> list[Hit]:
        hits: list[Hit] = []
        for key, score in zip(keys.tolist(), scores.tolist(), strict=True):
            row = self.db.execute("SELECT id, text, metadata FROM docs WHERE key = ?", (int(key),)).fetchone()
            if row is not None:  # a vector whose document row is gone is skipped
                hits.append(Hit(row[0], float(score), row[1] or "", json.loads(row[2] or "{}")))
        return hits

    def sample_vectors(self, limit: int, seed: int = 0) -> np.ndarray:
        """Up to ``limit`` stored vectors as float32 (for calibration)."""
        index = self.rescore if self.rescore is not None else self.index
        keys = np.array([r[0] for r in self.db.execute("SELECT key FROM docs")], dtype=np.uint64)
        if not len(keys):
            return np.zeros((0, self.dims), dtype=np.float32)
        rng = np.random.default_rng(seed)
        keys = rng.choice(keys, size=min(limit, len(keys)), replace=False)
        return np.asarray(index.get(keys), dtype=np.float32).reshape(len(keys), self.dims)

    def touch_sync(self) -> None:
        self.set_state("synced_at", f"{time.time():.3f}")
