"""Per-collection usearch indexes over full-dimension vectors, derived from the store.

An index is a cache of the store: it remembers the change-log sequence it reflects and catches
up by replaying the (compacted) log after that sequence, which is idempotent. So after a crash
it is simply behind, and at start it is loaded from disk and caught up, or built from scratch
when its file is missing or was made for another model. usearch rejects a duplicate key, so an
update is remove + add; adding to a memory-mapped view crashes, so indexes are always loaded.
Every call on one index holds its lock (no add while saving); callers run these methods off the
event loop because usearch holds the GIL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

import numpy as np

# onnxruntime before usearch: the other order segfaults (see server/app.py).
import onnxruntime  # noqa: F401
from usearch.index import Index

from server.store import records as rec
from server.store.lmdb_store import Change, Store

log = logging.getLogger(__name__)

_PAGE = 4096
# usearch patches its graph around removed nodes and recall drifts down with updates (remove +
# add): 5,000 random 64-dim vectors updated once fell from 0.91 to 0.79 recall@10; SciFact
# vectors updated 4 times, 0.989 to 0.983 (benchmarks/bench_index_updates.py). Once removals
# since the last build reach this share of the live vectors, the index is rebuilt from the store.
REBUILD_AFTER_REMOVED_FRACTION = 0.25
REBUILD_MIN_REMOVED = 256  # small collections: not worth a rebuild for a handful of updates


class CollectionIndex:
    def __init__(self, collection: str, path: Path, *, ndim: int, metric: str, dtype: str, fingerprint: str):
        self.collection = collection
        self.path = path
        self.meta_path = path.with_suffix(".json")
        self.ndim, self.metric, self.dtype, self.fingerprint = ndim, metric, dtype, fingerprint
        self.lock = threading.Lock()
        self.index = Index(ndim=ndim, metric=metric, dtype=dtype)
        self.sequence = 0
        self.saved_sequence = -1
        self.removed_since_build = 0
        self.rebuilds = 0

    def _header(self) -> dict[str, object]:
        return {
            "collection": self.collection,
            "fingerprint": self.fingerprint,
            "ndim": self.ndim,
            "metric": self.metric,
            "dtype": self.dtype,
        }

    def load(self) -> bool:
        """Load the saved index if it was made for this model and layout; False otherwise."""
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return False
        if not self.path.is_file() or {k: meta.get(k) for k in self._header()} != self._header():
            return False
        with self.lock:
            restored = Index.restore(str(self.path), view=False)
            if restored is None:
                return False
            self.index = restored
            self.sequence = self.saved_sequence = int(meta["sequence"])
        return True

    def build(self, store: Store) -> None:
        """From scratch: every live document of the collection, one batch add. The new graph is
        built off the lock, so searches keep using the old one meanwhile."""
        head = store.collection(self.collection)
        keys, _ids, vectors = store.matrix(self.collection)
        fresh = Index(ndim=self.ndim, metric=self.metric, dtype=self.dtype)
        if len(keys):
            fresh.add(keys, vectors)
        with self.lock:
            self.index = fresh
            # The head was read before the scan: changes committed during it are replayed by
            # the next catch_up, which is idempotent.
            self.sequence = head.sequence if head else 0
            self.saved_sequence = -1
            self.removed_since_build = 0

    def catch_up(self, store: Store) -> int:
        """Apply store changes after this index's sequence; returns how many were applied."""
        applied = 0
        with self.lock:
            head = store.collection(self.collection)
            until = head.sequence if head else 0
            while self.sequence < until:
                changes = store.changes(self.collection, self.sequence, until, _PAGE)
                if not changes:
                    self.sequence = until
                    break
                self._apply(store, changes)
                applied += len(changes)
                self.sequence = changes[-1].sequence
            worn = self.removed_since_build >= max(
                REBUILD_MIN_REMOVED, REBUILD_AFTER_REMOVED_FRACTION * len(self.index)
            )
        if worn:
            log.info(
                "index %r: %d removals since it was built; rebuilding it",
                self.collection,
                self.removed_since_build,
            )
            self.build(store)
            self.rebuilds += 1
            self.catch_up(store)  # whatever was committed during the rebuild
        return applied

    def _apply(self, store: Store, changes: list[Change]) -> None:
        upserts = {c.key: c.doc.content_hash for c in changes if c.op == rec.OP_UPSERT and c.doc}
        touched = np.asarray([c.key for c in changes], dtype=np.uint64)
        present = np.asarray([k for k in touched if self.index.contains(int(k))], dtype=np.uint64)
        if len(present):
            self.index.remove(present)
            self.removed_since_build += len(present)
        if upserts:
            keys = np.asarray(list(upserts), dtype=np.uint64)
            self.index.add(keys, store.vectors(list(upserts.values())))

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys, cosine scores) of the k nearest, best first."""
        with self.lock:
            if len(self.index) == 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            wanted = min(k, len(self.index))
            vector = np.asarray(query, np.float32)
            found = self.index.search(vector, wanted)
            if len(found.keys) < wanted:
                # HNSW can strand nodes after removals (updates are remove + add), so a graph
                # walk may come back short; a user asking for k gets k, from an exact scan.
                found = self.index.search(vector, wanted, exact=True)
        keys = np.asarray(found.keys, dtype=np.int64)
        dist = np.asarray(found.distances, dtype=np.float32)
        ok = np.isfinite(dist)
        return keys[ok], (1.0 - dist[ok]).astype(np.float32)

    def save(self) -> bool:
        """Atomically write index + sidecar (temp file + rename) when changed since the last save."""
        with self.lock:
            if self.saved_sequence == self.sequence:
                return False
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".usearch.tmp")
            self.index.save(str(tmp))
            os.replace(tmp, self.path)
            meta_tmp = self.meta_path.with_suffix(".json.tmp")
            meta_tmp.write_text(json.dumps({**self._header(), "sequence": self.sequence}))
            os.replace(meta_tmp, self.meta_path)
            self.saved_sequence = self.sequence
        return True

    def nbytes(self) -> int:
        return self.path.stat().st_size if self.path.is_file() else 0


class Indexes:
    """All collection indexes of one store; created lazily, cached for the process."""

    def __init__(
        self, store: Store, directory: Path, *, fingerprint: str, ndim: int, metric: str, dtype: str
    ):
        self.store, self.directory = store, Path(directory)
        self.fingerprint, self.ndim, self.metric, self.dtype = fingerprint, ndim, metric, dtype
        self._lock = threading.Lock()
        self._indexes: dict[str, CollectionIndex] = {}

    def path_for(self, collection: str) -> Path:
        digest = hashlib.sha256(collection.encode()).hexdigest()[:24]
        return self.directory / f"{digest}.usearch"

    def get(self, collection: str) -> CollectionIndex:
        """The index of ``collection``, loaded or built on first use and caught up with the store."""
        with self._lock:
            index = self._indexes.get(collection)
            if index is None:
                index = CollectionIndex(
                    collection,
                    self.path_for(collection),
                    ndim=self.ndim,
                    metric=self.metric,
                    dtype=self.dtype,
                    fingerprint=self.fingerprint,
                )
                meta = self.store.collection(collection)
                head = meta.sequence if meta else 0
                if index.load() and index.sequence <= head:
                    log.info("index %r loaded at sequence %d", collection, index.sequence)
                else:  # missing, made for another model, or ahead of the store (store replaced)
                    log.info("index %r missing or outdated: building it from the store", collection)
                    index.build(self.store)
                self._indexes[collection] = index
        applied = index.catch_up(self.store)
        if applied:
            log.info("index %r caught up with %d changes", collection, applied)
        return index

    def save_all(self) -> int:
        with self._lock:
            indexes = list(self._indexes.values())
        return sum(index.save() for index in indexes)

    def nbytes(self) -> int:
        return (
            sum(p.stat().st_size for p in self.directory.glob("*.usearch")) if self.directory.is_dir() else 0
        )
