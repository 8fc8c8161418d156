"""Per-collection usearch indexes over full-dimension vectors, derived from the store.

An index is a cache of the store. It holds each distinct vector of its collection once, under a
group key (:mod:`server.store.groups` maps groups to documents' chunks: a document stored as
several chunks has a vector per chunk): identical texts share one point, so duplicates cannot
crowd the graph. It remembers the change-log sequence it reflects
and catches up by replaying the (compacted) log after it, which is idempotent. At start a saved
index is loaded and reconciled with the store's documents (what a crash left behind is fixed
there), or built from scratch when its files are missing or made for another model.

Files, per collection (``<digest>`` names the collection): ``<digest>.<gen>.usearch`` and
``<digest>.<gen>.groups.npz`` (group keys and content hashes), written first, then
``<digest>.json`` naming generation ``<gen>``: the rename of that sidecar commits the save, so
a crash leaves the previous pair or the new one, never a mix.

usearch rejects a duplicate key, so a changed vector is remove + add; adding to a
memory-mapped view crashes, so indexes are always loaded. Every call on one index holds its
lock (no add while saving); callers run these methods off the event loop (usearch holds the GIL).
Vectors go in through :func:`embedcore.ann.add_reachable`: usearch's parallel add can leave a
node no graph walk reaches (CI: a unique document among duplicates missed itself at k=1).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

# onnxruntime before usearch: the other order segfaults (see server/app.py).
import onnxruntime  # noqa: F401
from usearch.index import Index

from embedcore.ann import add_reachable
from server.store import records as rec
from server.store.groups import ContentGroups
from server.store.lmdb_store import Change, Store

log = logging.getLogger(__name__)

_PAGE = 4096
_ADD_BATCH = 16384  # vectors read from the store per add during a build (bounds memory)
# usearch patches its graph around removed nodes and recall drifts down with updates (remove +
# add): 5,000 random 64-dim vectors updated once fell from 0.91 to 0.79 recall@10; SciFact
# vectors updated 4 times, 0.989 to 0.983 (benchmarks/bench_index_updates.py). Once removals
# since the last build reach this share of the live vectors, the index is rebuilt from the store.
REBUILD_AFTER_REMOVED_FRACTION = 0.25
REBUILD_MIN_REMOVED = 256  # small collections: not worth a rebuild for a handful of updates
# Vectors first asked for per document wanted when the collection holds chunked documents (a
# long document's chunks tend to sit together near a query); more are asked for when short.
CHUNK_OVERFETCH = 4
FORMAT = 2  # 2: one vector per distinct content hash, generation-named files


class CollectionIndex:
    def __init__(self, collection: str, path: Path, *, ndim: int, metric: str, dtype: str, fingerprint: str):
        """``path``: where the sidecar's stem lives (``<dir>/<digest>.usearch``; see the module
        docstring for the files written beside it)."""
        self.collection = collection
        self.stem = path.with_suffix("")
        self.meta_path = path.with_suffix(".json")
        self.ndim, self.metric, self.dtype, self.fingerprint = ndim, metric, dtype, fingerprint
        self.lock = threading.Lock()
        self.index = Index(ndim=ndim, metric=metric, dtype=dtype)
        self.groups = ContentGroups()
        self.generation = 0  # of the files last saved or loaded
        self.sequence = 0
        self.dirty = True  # changed since the last save
        self.removed_since_build = 0
        self.rebuilds = 0
        self.dropped = False  # the collection was dropped: never saved again

    @property
    def path(self) -> Path:
        """The usearch file of the current generation."""
        return self._file(self.generation, "usearch")

    def _file(self, generation: int, kind: str) -> Path:
        return self.stem.with_name(f"{self.stem.name}.{generation}.{kind}")

    def __len__(self) -> int:
        """Live documents (the usearch index holds one vector per distinct content)."""
        return self.groups.documents

    def _header(self) -> dict[str, object]:
        return {
            "collection": self.collection,
            "fingerprint": self.fingerprint,
            "ndim": self.ndim,
            "metric": self.metric,
            "dtype": self.dtype,
            "format": FORMAT,
        }

    # -- load, build, catch up ------------------------------------------------------------------

    def load(self, store: Store) -> bool:
        """Load the saved index if it was made for this model and layout, and reconcile it with
        the store's documents; False (nothing changed) when there is none to load. Damaged
        files (cut short, garbage: usearch raises, numpy raises) are set aside with a warning
        and False is returned: the index is a cache, rebuilt from the store."""
        try:
            meta = json.loads(self.meta_path.read_text())
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as exc:
            self._set_aside([self.meta_path], exc)
            return False
        if not isinstance(meta, dict) or {k: meta.get(k) for k in self._header()} != self._header():
            return False  # another model or layout (or not our sidecar): rebuilt, then replaced
        try:
            generation = int(meta["generation"])
            sequence = int(meta["sequence"])
            table = np.load(self._file(generation, "groups.npz"))
            keys, hashes, next_key = table["keys"], table["hashes"], int(table["next_key"])
            path = self._file(generation, "usearch")
            expected = meta.get("bytes")
            if expected is not None and path.is_file() and path.stat().st_size != int(expected):
                raise ValueError(f"{path.name} has {path.stat().st_size} bytes, saved with {expected}")
            restored = Index.restore(str(path), view=False) if path.is_file() else None
            if restored is None or len(restored) != len(keys) or restored.ndim != self.ndim:
                raise ValueError(f"{path.name} is missing or does not match its groups table")
        except Exception as exc:  # any damage of a cache file means: rebuild it
            files = [self.meta_path, *self.stem.parent.glob(f"{self.stem.name}.*.*")]
            self._set_aside(files, exc)
            return False
        with self.lock:
            self.index = restored
            self.groups = ContentGroups.indexed(keys, hashes, next_key)
            self.generation = generation
            self.dirty = False
            self._reconcile(store)
            self.dirty = self.dirty or self.sequence != sequence
        return True

    def _set_aside(self, files: list[Path], exc: BaseException) -> None:
        """Rename damaged index files to ``*.damaged`` (kept for a post-mortem, replacing older
        ones) so they are neither read again nor in the way of the rebuilt index."""
        log.warning(
            "index %r: its files in %s are damaged (%s: %s); setting them aside as *.damaged and "
            "rebuilding the index from the store",
            self.collection,
            self.stem.parent,
            type(exc).__name__,
            str(exc)[:200],
        )
        for path in files:
            if path.suffix == ".damaged":
                continue
            try:
                os.replace(path, path.with_name(path.name + ".damaged"))
            except FileNotFoundError:
                pass
            except OSError as err:  # cannot rename: the rebuilt index's save overwrites it
                log.warning("could not set %s aside: %s", path, err)

    def build(self, store: Store) -> None:
        """From scratch: one vector per distinct content of the live documents. The new graph is
        built off the lock, so searches keep using the old one meanwhile."""
        fresh = Index(ndim=self.ndim, metric=self.metric, dtype=self.dtype)
        groups = ContentGroups(self.groups.next_key)
        head = self._scan(store, groups)
        added, _ = groups.settle()
        for start in range(0, len(added), _ADD_BATCH):
            self._add(fresh, store, added[start : start + _ADD_BATCH])
        with self.lock:
            self.index, self.groups = fresh, groups
            # The head was read before the scan: changes committed during it are replayed by
            # the next catch_up, which is idempotent.
            self.sequence = head
            self.dirty = True
            self.removed_since_build = 0

    def _scan(self, store: Store, groups: ContentGroups) -> int:
        """Assign every live document of the store to ``groups``; returns the head sequence
        read before the scan."""
        head = store.collection(self.collection)
        for rows in store.content_keys(self.collection):
            for key, hashes in rows:
                groups.assign_doc(key, hashes)
        return head.sequence if head else 0

    def _reconcile(self, store: Store) -> None:
        """(lock held) Make the loaded index hold exactly the store's documents. A saved index
        ahead of the store (the store was replaced) or behind it (a crash) ends up right."""
        self.sequence = self._scan(store, self.groups)
        self._settle(store)

    def catch_up(self, store: Store) -> int:
        """Apply store changes after this index's sequence; returns how many were applied."""
        applied = 0
        with self.lock:
            head = store.collection(self.collection)
            until = head.sequence if head else 0
            while self.sequence < until:
                changes = store.changes(self.collection, self.sequence, until, _PAGE)
                self.dirty = True
                if not changes:
                    self.sequence = until
                    break
                self._apply(store, changes)
                applied += len(changes)
                self.sequence = changes[-1].sequence
            worn = self._worn()
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

    def _worn(self) -> bool:
        """(lock held) Removals since the build have reached the rebuild threshold: the graph's
        recall is no longer trusted (searches scan exactly until the rebuild replaces it)."""
        return self.removed_since_build >= max(
            REBUILD_MIN_REMOVED, REBUILD_AFTER_REMOVED_FRACTION * len(self.index)
        )

    def _apply(self, store: Store, changes: list[Change]) -> None:
        for c in changes:
            upsert = c.op == rec.OP_UPSERT and c.doc is not None
            self.groups.assign_doc(c.key, c.doc.hashes if upsert and c.doc else [])
        self._settle(store)

    def _settle(self, store: Store) -> None:
        added, removed = self.groups.settle()
        if removed:
            self.index.remove(np.asarray(removed, dtype=np.uint64))
            self.removed_since_build += len(removed)
            self.dirty = True
        if added:
            self._add(self.index, store, added)
            self.dirty = True

    @staticmethod
    def _add(index: Index, store: Store, groups: list[tuple[int, bytes]]) -> None:
        keys = np.asarray([key for key, _ in groups], dtype=np.uint64)
        reinserted = add_reachable(index, keys, store.vectors([chash for _, chash in groups]))
        if reinserted:
            log.debug("index: re-inserted %d of %d vectors a parallel add stranded", reinserted, len(keys))

    # -- search and save ------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(document index keys int64, cosine scores float32) of the k best documents, best
        first: :meth:`search_chunks` without the chunks."""
        keys, scores, _ordinals = self.search_chunks(query, k)
        return keys, scores

    def search_chunks(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(document index keys int64, cosine scores float32, best chunk ordinals int32) of the
        k best documents, best first; a document scores as its best chunk. Documents sharing a
        vector share its score and come in the order they were created."""
        with self.lock:
            distinct = len(self.index)
            if distinct == 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int32)
            # k distinct vectors carry at least k chunks; without chunked documents that is k
            # documents. Chunks of one document can fill them, so ask for more until the best
            # vectors hold k documents (or all vectors were seen).
            chunked = self.groups.chunks > self.groups.documents
            wanted = min(k * (CHUNK_OVERFETCH if chunked else 1), distinct)
            vector = np.asarray(query, np.float32)
            while True:
                # A graph worn by removals (a rebuild is due or running: other callers keep
                # removing from it meanwhile) lost recall: scan exactly until it is replaced.
                found = self.index.search(vector, wanted, exact=self._worn())
                if len(found.keys) < wanted:
                    # HNSW can strand nodes after removals (updates are remove + add), so a
                    # graph walk may come back short; a user asking for k gets k, from an exact
                    # scan.
                    found = self.index.search(vector, wanted, exact=True)
                dist = np.asarray(found.distances, dtype=np.float32)
                keys = np.asarray(found.keys, dtype=np.int64)[np.isfinite(dist)]
                docs = self.groups.expand(keys.tolist(), k)
                if len(docs) >= k or wanted >= distinct:
                    break
                wanted = min(wanted * 4, distinct)
            score_of = dict(zip(keys.tolist(), (1.0 - dist[np.isfinite(dist)]).tolist(), strict=True))
        return (
            np.asarray([doc for _, doc, _ in docs], dtype=np.int64),
            np.asarray([score_of[group] for group, _, _ in docs], dtype=np.float32),
            np.asarray([ordinal for _, _, ordinal in docs], dtype=np.int32),
        )

    def save(self) -> bool:
        """Write a new generation (index + groups), then commit it by renaming the sidecar over
        the old one, when changed since the last save; older generations are then removed."""
        with self.lock:
            if not self.dirty or self.dropped:
                return False
            self.stem.parent.mkdir(parents=True, exist_ok=True)
            generation = self.generation + 1
            written = [self._file(generation, "usearch"), self._file(generation, "groups.npz")]
            meta_tmp = self.meta_path.with_suffix(".json.tmp")
            try:
                self.index.save(str(written[0]))
                keys, hashes = self.groups.table()
                with written[1].open("wb") as handle:
                    np.savez(handle, keys=keys, hashes=hashes, next_key=np.uint64(self.groups.next_key))
                meta = {**self._header(), "sequence": self.sequence, "generation": generation}
                meta["bytes"] = written[0].stat().st_size  # a file cut short is found at load
                meta_tmp.write_text(json.dumps(meta))
                os.replace(meta_tmp, self.meta_path)
            except BaseException:
                # A full disk (usearch: RuntimeError, numpy: OSError): the partial files of the
                # new generation would only hold on to the space; the previous one stays valid.
                for path in (*written, meta_tmp):
                    with contextlib.suppress(OSError):
                        path.unlink(missing_ok=True)
                raise
            self.generation = generation
            self.dirty = False
            _remove_stale(self.stem, keep={self.path, self._file(generation, "groups.npz")})
        return True

    def nbytes(self) -> int:
        return self.path.stat().st_size if self.path.is_file() else 0


def _remove_stale(stem: Path, keep: Iterable[Path]) -> None:
    """Files of other generations (and the one-file layout before them) of this collection."""
    kept = set(keep)
    for path in stem.parent.glob(f"{stem.name}.*"):
        if path not in kept and path.suffix in (".usearch", ".npz"):
            path.unlink(missing_ok=True)


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
                if index.load(self.store):
                    log.info("index %r loaded at sequence %d", collection, index.sequence)
                else:  # missing, or made for another model or layout
                    log.info("index %r missing or outdated: building it from the store", collection)
                    index.build(self.store)
                self._indexes[collection] = index
        applied = index.catch_up(self.store)
        if applied:
            # debug: every Search and Ingest catches up; at INFO it was a line per call
            log.debug("index %r caught up with %d changes", collection, applied)
        return index

    def drop(self, collection: str) -> None:
        """Forget ``collection``'s index and remove its files (the collection was dropped)."""
        with self._lock:
            index = self._indexes.pop(collection, None)
        if index is not None:
            with index.lock:  # waits for a save in progress; none follows
                index.dropped = True
        stem = self.path_for(collection).with_suffix("")
        for path in [stem.with_suffix(".json"), *stem.parent.glob(f"{stem.name}.*")]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def nbytes_of(self, collection: str) -> int:
        """Bytes of ``collection``'s saved usearch index file (0 before its first save)."""
        with self._lock:
            index = self._indexes.get(collection)
        if index is not None:
            return index.nbytes()
        stem = self.path_for(collection).with_suffix("")
        return sum(p.stat().st_size for p in stem.parent.glob(f"{stem.name}.*.usearch"))

    def save_all(self) -> int:
        with self._lock:
            indexes = list(self._indexes.values())
        return sum(index.save() for index in indexes)

    def nbytes(self) -> int:
        return (
            sum(p.stat().st_size for p in self.directory.glob("*.usearch")) if self.directory.is_dir() else 0
        )
