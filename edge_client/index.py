"""The local vector index: usearch for vectors, sqlite for ids, texts and sync state.

One vector per distinct content: documents with the same content (the server's content hash for
synced documents, the text for local ones) share one point of the graph, which a search expands
to every document carrying it. A document the server stored as several chunks has a vector per
chunk (table ``chunks``: its chunks' vectors and character spans; ``docs.vkey`` is its first
chunk's); a search ranks documents by their best chunk and says which chunk that was.
Identical points crowd an HNSW graph and strand the rest (6,000
documents over 40 texts: 172 of 200 unique ones no longer found themselves).

dtypes: ``f16`` (default, metric cos), ``i8`` (metric cos: ip would give unscaled distances),
``b1`` (packed sign bits, metric hamming; candidates are rescored with f16 vectors kept in a
second index beside it). Updates are remove + add, and usearch's graph loses recall as removals
pile up, so once removals since the last build reach a share of the vectors the graph is rebuilt
from the vectors it holds; a graph walk that comes back short is redone as an exact scan.
Vectors go in through :func:`embedcore.ann.add_reachable`: usearch's parallel add can leave a
node no walk reaches (a 140-point index missed 1-2 of 100 documents' own texts at k=1).

Saves are atomic: the index files of a new generation are written beside the old ones, then one
sqlite commit records the generation together with the documents, then the old files go; a
crash leaves the previous state whole. Damaged files (a vector file cut short or garbage, a
sqlite file that is not a database) are set aside as ``*.damaged`` with a warning and the index
starts again: synced documents are synced again, local ones embedded again (:attr:`lost_local`).
The index is reopened from disk in memory on start (never a memory-mapped view: adding to a
view segfaults).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# onnxruntime must be loaded before usearch: the other order segfaults the process.
import onnxruntime  # noqa: F401

from usearch.index import Index  # isort: skip

from edge_client.errors import LocalIndexError
from embedcore import Filter, MetadataTable
from embedcore.ann import add_reachable

log = logging.getLogger(__name__)

DTYPES = ("f16", "i8", "b1")
RESCORE_MULTIPLIER = 8  # b1 candidates per result, rescored with f16
# Vectors first asked for per document wanted when chunked documents are held (as the server's
# server/store/index.py); more are asked for when they hold too few documents.
CHUNK_OVERFETCH = 4
# The server's rule (server/store/index.py), for the same reason: after many small updates a
# patched graph missed a document the server ranked 2nd from the local top-50 (recall@10 0.985
# against 0.995 for a fresh build of the same vectors).
REBUILD_AFTER_REMOVED_FRACTION = 0.25
REBUILD_MIN_REMOVED = 256
_KEY_MASK = (1 << 63) - 1


def key_of(doc_id: str) -> int:
    """A stable 63-bit key for a document id (same id -> same key, no allocation)."""
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") >> 1


def vector_content(vectors: np.ndarray) -> list[str]:
    """Content keys for vectors that come without one: the digest of their float32 bytes."""
    rows = np.ascontiguousarray(vectors, dtype="<f4")
    return ["sha256-f32:" + hashlib.sha256(row.tobytes()).hexdigest() for row in rows]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # cosine similarity of the query and the document's best chunk
    text: str
    metadata: dict[str, Any]
    text_truncated: bool = False  # the server cut the text to fit its message limit
    # The local vector this document shares with others of the same content (0: from the server).
    vector_key: int = field(default=0, repr=False, compare=False)
    # The best chunk: characters [snippet_start, snippet_stop) of the text, and its text for a
    # document stored as several chunks ("" for one embedded whole: the snippet is the text).
    snippet_start: int = 0
    snippet_stop: int = 0
    snippet: str = ""


@dataclass(frozen=True)
class Chunk:
    """One chunk of a document stored as several: its (dims,) unit-length float32 vector, the
    key of its content (as ``contents`` of :meth:`LocalIndex.upsert`), and its characters
    ``[start, stop)`` of the document's text."""

    vector: np.ndarray
    content: str
    start: int
    stop: int


@dataclass(frozen=True)
class _Table:
    """The documents' metadata (row n: document n, in key order) and one row per vector of
    theirs: its document's number, its vector key, its span (-1, 0: embedded whole)."""

    version: int
    metadata: MetadataTable
    keys: list[int]  # document n's key
    owner: np.ndarray  # (rows,) int64
    vkeys: np.ndarray  # (rows,) uint64
    spans: list[tuple[int, int]]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (key INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, text TEXT,
    metadata TEXT, source TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vectors (vkey INTEGER PRIMARY KEY, content TEXT UNIQUE);
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (key INTEGER NOT NULL, ord INTEGER NOT NULL, vkey INTEGER NOT NULL,
    start INTEGER NOT NULL, stop INTEGER NOT NULL, PRIMARY KEY (key, ord));
CREATE INDEX IF NOT EXISTS chunks_vkey ON chunks (vkey);
"""


def _migrate(db: sqlite3.Connection) -> None:
    """Indexes written before vectors were shared: each document keeps its own vector (already
    in the usearch file under the document's key), recorded as a vector of unknown content."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(docs)")}
    if "vkey" not in columns:
        db.execute("ALTER TABLE docs ADD COLUMN vkey INTEGER")
        db.execute("UPDATE docs SET vkey = key")
        db.execute("INSERT OR IGNORE INTO vectors (vkey, content) SELECT key, NULL FROM docs")
    if "text_truncated" not in columns:
        db.execute("ALTER TABLE docs ADD COLUMN text_truncated INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX IF NOT EXISTS docs_vkey ON docs (vkey, id)")
    db.commit()


class LocalIndex:
    """One collection's local index in ``directory``. Not thread-safe: one writer at a time."""

    def __init__(self, directory: Path, *, dims: int, dtype: str = "f16") -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._version = 0  # bumped by every write: the metadata table (filters) follows it
        self._table: _Table | None = None
        # Documents added locally whose vectors were lost with a damaged index file: the
        # client embeds them again (their texts are in sqlite); synced ones are synced again.
        self.lost_local: list[tuple[str, str, dict[str, Any]]] = []
        self.recovered = ""  # what was damaged and set aside at open ("" when nothing)
        try:
            self.db = self._connect()
        except sqlite3.DatabaseError as exc:  # not a database, malformed: set it all aside
            self._set_aside(f"its sqlite file is damaged ({exc})", self.directory.glob("*"))
            self.db = self._connect()
        stored_dims, stored_dtype = self.get_state("dims"), self.get_state("dtype")
        if stored_dims and (int(stored_dims) != dims or stored_dtype != dtype):
            # Another layout on disk: the caller asked for a different one, so start afresh.
            self._wipe()
        self.dims, self.dtype = dims, dtype
        self.set_state("dims", str(dims))
        self.set_state("dtype", dtype)
        self.db.commit()
        self.generation = int(self.get_state("generation", "0"))
        try:
            self.index = self._open(self._path(dtype), dtype)
            self.rescore = self._open(self._path("f16"), "f16") if dtype == "b1" else None
        except LocalIndexError as exc:
            self._recover_vectors(str(exc))
        self.removed_since_build = int(self.get_state("removed_since_build", "0"))
        self.rebuilds = 0
        self._documents = self._count()

    # --- files -------------------------------------------------------------------------------
    def _path(self, dtype: str, generation: int | None = None) -> Path:
        generation = self.generation if generation is None else generation
        infix = f".{generation}" if generation else ""  # generation 0: the layout before generations
        return self.directory / f"vectors.{dtype}{infix}.usearch"

    def _new(self, dtype: str) -> Index:
        metric = "hamming" if dtype == "b1" else "cos"
        return Index(ndim=self.dims, metric=metric, dtype=dtype)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.directory / "docs.sqlite")
        try:
            db.executescript(_SCHEMA)
            _migrate(db)
            db.execute("SELECT count(*) FROM docs").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def _open(self, path: Path, dtype: str) -> Index:
        index = self._new(dtype)
        if path.exists():
            try:
                index.load(str(path))
            except Exception as exc:  # usearch raises RuntimeError/ValueError on a bad file
                raise LocalIndexError(f"cannot load {path}: {exc}") from exc
            vectors = int(self.db.execute("SELECT count(*) FROM vectors").fetchone()[0])
            if len(index) != vectors:
                raise LocalIndexError(f"{path} holds {len(index)} vectors, the documents {vectors}")
        elif self.generation and self.db.execute("SELECT 1 FROM vectors LIMIT 1").fetchone():
            raise LocalIndexError(f"{path} is missing")
        return index

    def _set_aside(self, why: str, files: Iterable[Path]) -> None:
        """Rename ``files`` to ``*.damaged`` (replacing older ones), with a warning."""
        log.warning("local index %s: %s; setting it aside and rebuilding", self.directory, why)
        self.recovered = why
        for path in list(files):
            if path.is_file() and not path.name.endswith(".damaged"):
                os.replace(path, path.with_name(path.name + ".damaged"))

    def _recover_vectors(self, why: str) -> None:
        """A vector file is damaged: set the files aside, forget the synced documents and the
        sync state (the next sync fetches everything again) and keep the texts of the local
        documents in :attr:`lost_local` for the client to embed again."""
        self._set_aside(f"a vector file is damaged ({why})", self.directory.glob("vectors.*.usearch"))
        self.lost_local = [
            (str(doc_id), str(text or ""), json.loads(meta) if meta else {})
            for doc_id, text, meta in self.db.execute(
                "SELECT id, text, metadata FROM docs WHERE source = 'local' ORDER BY key"
            )
        ]
        # The bundle and collection stay: the next sync starts at sequence 0 without a reset
        # (a reset would drop the local documents that are about to be embedded again).
        kept = {name: self.get_state(name) for name in ("bundle_fingerprint", "collection")}
        self.reset()
        for name, value in kept.items():
            if value:
                self.set_state(name, value)
        self.db.commit()

    def _indexes(self) -> list[tuple[Index, str]]:
        return [(self.index, self.dtype)] + ([(self.rescore, "f16")] if self.rescore is not None else [])

    def _remove_files(self, keep: Iterable[Path] = ()) -> None:
        kept = set(keep)
        for path in self.directory.glob("vectors.*.usearch"):
            if path not in kept:
                path.unlink(missing_ok=True)

    def _wipe(self) -> None:
        for table in ("docs", "vectors", "state", "chunks"):
            self.db.execute(f"DELETE FROM {table}")
        self.db.commit()
        self._remove_files()

    def reset(self) -> None:
        """Drop every vector, document and sync state (a changed bundle needs a full resync)."""
        self._wipe()
        self.set_state("dims", str(self.dims))
        self.set_state("dtype", self.dtype)
        self.db.commit()
        self.generation = 0
        self.index = self._new(self.dtype)
        self.rescore = self._new("f16") if self.dtype == "b1" else None
        self.removed_since_build = 0
        self._documents = 0
        self._version += 1

    def drop_source(self, source: str) -> int:
        """Delete every document that came from ``source`` ("sync" or "local"); returns how many."""
        ids = [str(row[0]) for row in self.db.execute("SELECT id FROM docs WHERE source = ?", (source,))]
        return self.delete(ids)

    def save(self) -> None:
        """Write the index files as a new generation, commit it with the documents and state in
        one sqlite transaction, then remove the previous generation's files."""
        generation = self.generation + 1
        written = []
        for index, dtype in self._indexes():
            path = self._path(dtype, generation)
            index.save(str(path))
            written.append(path)
        self.set_state("generation", str(generation))
        self.set_state("removed_since_build", str(self.removed_since_build))
        self.db.commit()
        self.generation = generation
        self._remove_files(keep=written)

    def close(self) -> None:
        self.db.close()

    # --- state -------------------------------------------------------------------------------
    def get_state(self, name: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else default

    def set_state(self, name: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO state (name, value) VALUES (?, ?)", (name, value))

    def __len__(self) -> int:
        """Documents (several may share one vector)."""
        return self._documents

    def _count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM docs").fetchone()[0])

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
        contents: Sequence[str] | None = None,
        truncated: Sequence[bool] | None = None,
        chunks: Sequence[Sequence[Chunk]] | None = None,
    ) -> None:
        """Add or replace documents (vectors: (n, dims) unit-length float32). ``contents``: a key
        per document naming what its vector was computed from (same key, same vector: they
        share one); default: the vector's own bytes. ``truncated``: the text was cut.
        ``chunks``: per document, its chunks when it is stored as several (empty: embedded
        whole); its vector and content are then its first chunk's."""
        if not ids:
            return
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dims):
            raise ValueError(f"expected vectors of shape ({len(ids)}, {self.dims}), got {vectors.shape}")
        contents = list(contents) if contents is not None else vector_content(vectors)
        # The last occurrence of an id in one batch wins, as it would applied one by one.
        last = {doc_id: i for i, doc_id in enumerate(ids)}
        rows = sorted(last.values())
        keys = [key_of(ids[i]) for i in rows]
        before = self._vkeys_of_docs(keys)
        # Every vector of the batch: each document's own, then the chunks of chunked ones.
        doc_chunks = [list(chunks[i]) if chunks is not None else [] for i in rows]
        for parts in doc_chunks:
            for part in parts:
                if np.shape(part.vector) != (self.dims,):
                    shape = np.shape(part.vector)
                    raise ValueError(f"expected chunk vectors of {self.dims} dims, got {shape}")
        flat_contents = [contents[i] for i in rows] + [c.content for parts in doc_chunks for c in parts]
        flat_vectors = [vectors[i] for i in rows] + [
            np.asarray(c.vector, dtype=np.float32) for parts in doc_chunks for c in parts
        ]
        flat_vkeys, fresh = self._vkeys_for(flat_contents)
        vkeys = flat_vkeys[: len(rows)]
        if fresh:
            new_keys = np.asarray([flat_vkeys[j] for j in fresh], dtype=np.uint64)
            batch = np.stack([flat_vectors[j] for j in fresh])
            add_reachable(self.index, new_keys, self._vectors_for(batch, self.dtype))
            if self.rescore is not None:
                self.rescore.add(new_keys, batch)
            self.db.executemany(
                "INSERT INTO vectors (vkey, content) VALUES (?, ?)",
                [(flat_vkeys[j], flat_contents[j]) for j in fresh],
            )
        self.db.executemany("DELETE FROM chunks WHERE key = ?", [(key,) for key in keys])
        chunk_rows = []
        position = len(rows)
        for key, parts in zip(keys, doc_chunks, strict=True):
            for ordinal, part in enumerate(parts):
                chunk_rows.append((key, ordinal, flat_vkeys[position], part.start, part.stop))
                position += 1
        self.db.executemany(
            "INSERT INTO chunks (key, ord, vkey, start, stop) VALUES (?, ?, ?, ?, ?)", chunk_rows
        )
        self.db.executemany(
            "INSERT OR REPLACE INTO docs (key, id, text, metadata, source, vkey, text_truncated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    key,
                    ids[i],
                    texts[i],
                    json.dumps(metadata[i], sort_keys=True),
                    source,
                    vkey,
                    int(bool(truncated[i])) if truncated is not None else 0,
                )
                for key, i, vkey in zip(keys, rows, vkeys, strict=True)
            ],
        )
        self._documents += len(keys) - len(before)
        self._version += 1
        self._drop_unused({v for found in before.values() for v in found} - set(flat_vkeys))

    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id; returns how many existed."""
        keys = [key_of(i) for i in dict.fromkeys(ids)]
        before = self._vkeys_of_docs(keys)
        self.db.executemany("DELETE FROM docs WHERE key = ?", [(k,) for k in before])
        self.db.executemany("DELETE FROM chunks WHERE key = ?", [(k,) for k in before])
        self._documents -= len(before)
        self._version += 1
        self._drop_unused({v for found in before.values() for v in found})
        return len(before)

    def _vkeys_of_docs(self, keys: Sequence[int]) -> dict[int, set[int]]:
        """Document key -> its vector keys (its own and its chunks'), for the documents that
        exist."""
        out: dict[int, set[int]] = {}
        for key in keys:
            row = self.db.execute("SELECT vkey FROM docs WHERE key = ?", (key,)).fetchone()
            if row is not None:
                found = {int(row[0])}
                chunk_rows = self.db.execute("SELECT vkey FROM chunks WHERE key = ?", (key,))
                found.update(int(r[0]) for r in chunk_rows)
                out[key] = found
        return out

    def _vkeys_for(self, contents: Sequence[str]) -> tuple[list[int], list[int]]:
        """The vector key of each content, and the positions whose vector is not stored yet
        (the first of each new content)."""
        vkeys: list[int] = []
        fresh: list[int] = []
        allocated: dict[str, int] = {}
        for j, content in enumerate(contents):
            found = allocated.get(content)
            if found is None:
                row = self.db.execute("SELECT vkey FROM vectors WHERE content = ?", (content,)).fetchone()
                found = int(row[0]) if row is not None else None
            if found is None:
                found = key_of("vector:" + content)
                taken = set(allocated.values())
                while (
                    found in taken
                    or self.db.execute("SELECT 1 FROM vectors WHERE vkey = ?", (found,)).fetchone()
                ):
                    found = (found + 1) & _KEY_MASK  # a 63-bit collision: probe the next key
                allocated[content] = found
                fresh.append(j)
            vkeys.append(found)
        return vkeys, fresh

    def _drop_unused(self, vkeys: Iterable[int]) -> None:
        """Remove the vectors no document refers to any more; rebuild a worn graph."""
        unused = [
            vkey
            for vkey in vkeys
            if not self.db.execute("SELECT 1 FROM docs WHERE vkey = ? LIMIT 1", (vkey,)).fetchone()
            and not self.db.execute("SELECT 1 FROM chunks WHERE vkey = ? LIMIT 1", (vkey,)).fetchone()
        ]
        if unused:
            keys = np.asarray(unused, dtype=np.uint64)
            for index, _dtype in self._indexes():
                present = keys[np.asarray(index.contains(keys), dtype=bool).reshape(-1)]
                if len(present):
                    index.remove(present)
            self.db.executemany("DELETE FROM vectors WHERE vkey = ?", [(v,) for v in unused])
            self.removed_since_build += len(unused)
        if self.removed_since_build >= max(
            REBUILD_MIN_REMOVED, REBUILD_AFTER_REMOVED_FRACTION * len(self.index)
        ):
            self.rebuild()

    def rebuild(self) -> None:
        """A fresh graph from the vectors the index holds (f16 rescoring vectors for b1)."""
        keys = np.asarray([row[0] for row in self.db.execute("SELECT vkey FROM vectors")], dtype=np.uint64)
        source = self.rescore if self.rescore is not None else self.index
        fresh = [(self._new(dtype), dtype) for _index, dtype in self._indexes()]
        if len(keys):
            vectors = np.asarray(source.get(keys, dtype="f32"), dtype=np.float32).reshape(len(keys), -1)
            for index, dtype in fresh:
                if index is fresh[0][0]:  # the searched graph
                    add_reachable(index, keys, self._vectors_for(vectors, dtype))
                else:  # rescoring vectors, read by key only
                    index.add(keys, self._vectors_for(vectors, dtype))
        self.index = fresh[0][0]
        self.rescore = fresh[1][0] if len(fresh) > 1 else None
        self.removed_since_build = 0
        self.rebuilds += 1

    # --- reads -------------------------------------------------------------------------------
    def search(self, vector: np.ndarray, k: int, *, keep: Filter | None = None) -> list[Hit]:
        """Best ``k`` documents for one unit-length query vector, best first (score = cosine of
        the document's best chunk). Documents sharing a vector share its score and come in id
        order. ``keep``: a metadata filter (embedcore.filters, as the server's Search): only
        the documents it keeps are ranked, exactly (every kept document's vectors scored)."""
        if keep is not None:
            return self._search_kept(vector, k, keep)
        distinct = len(self.index)
        if not distinct or k <= 0:
            return []
        # k distinct vectors carry at least k documents, so they hold the k best documents;
        # unless chunks of one document fill them: then more are asked for until they do.
        chunked = self.db.execute("SELECT 1 FROM chunks LIMIT 1").fetchone() is not None
        wanted = min(k * (CHUNK_OVERFETCH if chunked else 1), distinct)
        query = np.asarray(vector, dtype=np.float32).reshape(1, self.dims)
        while True:
            if self.rescore is None:
                keys, distances = self._walk(self.index, self._vectors_for(query, self.dtype), wanted)
                keys, scores = keys[:wanted], 1.0 - distances[:wanted]
            else:
                candidates, _ = self._walk(
                    self.index, self._vectors_for(query, "b1"), wanted * RESCORE_MULTIPLIER
                )
                stored = np.asarray(self.rescore.get(candidates), dtype=np.float32)
                exact = stored.reshape(len(candidates), -1) @ query[0]
                best = np.argsort(-exact, kind="stable")[:wanted]
                keys, scores = candidates[best], exact[best]
            hits = self._hits(keys, scores, k)
            if len(hits) >= k or wanted >= distinct:
                return hits
            wanted = min(wanted * 4, distinct)

    def _metadata(self) -> _Table:
        """Every document's metadata and vectors' keys, read once per version of the index."""
        if self._table is None or self._table.version != self._version:
            ids: list[str] = []
            metadata: list[dict[str, Any]] = []
            keys: list[int] = []
            for key, doc_id, meta in self.db.execute("SELECT key, id, metadata FROM docs ORDER BY key"):
                keys.append(int(key))
                ids.append(str(doc_id))
                metadata.append(json.loads(meta or "{}"))
            # One row per vector of a document: its own (embedded whole) or each chunk's.
            rows = self.db.execute(
                "SELECT key, vkey, -1, 0 FROM docs WHERE NOT EXISTS "
                "(SELECT 1 FROM chunks WHERE chunks.key = docs.key) "
                "UNION ALL SELECT key, vkey, start, stop FROM chunks ORDER BY 1, 3"
            ).fetchall()
            number = {key: n for n, key in enumerate(keys)}
            self._table = _Table(
                self._version,
                MetadataTable(ids, metadata),
                keys,
                np.asarray([number[int(r[0])] for r in rows], dtype=np.int64),
                np.asarray([int(r[1]) for r in rows], dtype=np.uint64),
                [(int(r[2]), int(r[3])) for r in rows],
            )
        return self._table

    def _search_kept(self, vector: np.ndarray, k: int, keep: Filter) -> list[Hit]:
        """Exact search over the documents ``keep`` keeps (see :meth:`search`)."""
        table = self._metadata()
        kept = keep.mask(table.metadata)
        rows = np.flatnonzero(kept[table.owner]) if len(table.owner) else np.zeros(0, np.int64)
        if not len(rows) or k <= 0:
            return []
        source = self.rescore if self.rescore is not None else self.index
        vkeys = table.vkeys[rows]
        stored = np.asarray(source.get(vkeys, dtype="f32"), dtype=np.float32).reshape(len(rows), self.dims)
        stored /= np.clip(np.linalg.norm(stored, axis=1, keepdims=True), 1e-12, None)
        query = np.asarray(vector, dtype=np.float32).reshape(self.dims)
        scores = stored @ (query / max(float(np.linalg.norm(query)), 1e-12))
        order = np.argsort(-scores, kind="stable")
        hits: list[Hit] = []
        seen: set[int] = set()
        for i in order.tolist():
            doc = int(table.owner[rows[i]])
            if doc in seen:
                continue
            seen.add(doc)
            row = self.db.execute(
                "SELECT text, text_truncated FROM docs WHERE key = ?", (table.keys[doc],)
            ).fetchone()
            text = str(row[0] or "")
            start, stop = table.spans[rows[i]]
            whole = start < 0
            hits.append(
                Hit(
                    table.metadata.ids[doc],
                    float(scores[i]),
                    text,
                    table.metadata.metadata[doc],
                    bool(row[1]),
                    int(vkeys[i]),
                    0 if whole else start,
                    len(text) if whole else stop,
                    "" if whole else text[start:stop],
                )
            )
            if len(hits) >= k:
                break
        return hits

    def _walk(self, index: Index, query: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys, distances) of the ``count`` nearest (fewer only when the index holds fewer)."""
        count = min(count, len(index))
        found = index.search(query, count)
        if len(np.asarray(found.keys).reshape(-1)) < count:
            # HNSW strands nodes after removals: a short walk is redone as an exact scan, so
            # asking for k gives k.
            found = index.search(query, count, exact=True)
        keys = np.asarray(found.keys, dtype=np.uint64).reshape(-1)
        distances = np.asarray(found.distances, dtype=np.float32).reshape(-1)
        return keys, distances

    def _hits(self, vkeys: np.ndarray, scores: np.ndarray, k: int) -> list[Hit]:
        """The first ``k`` documents carrying the vectors ``vkeys`` (ranked), each once, at its
        best chunk."""
        hits: list[Hit] = []
        seen: set[str] = set()
        for vkey, score in zip(vkeys.tolist(), scores.tolist(), strict=True):
            # Documents embedded whole with this vector, and chunks of chunked ones.
            rows = self.db.execute(
                "SELECT id, text, metadata, text_truncated, -1, 0 FROM docs WHERE vkey = ? AND NOT EXISTS "
                "(SELECT 1 FROM chunks WHERE chunks.key = docs.key) "
                "UNION ALL SELECT d.id, d.text, d.metadata, d.text_truncated, c.start, c.stop "
                "FROM chunks c JOIN docs d ON d.key = c.key WHERE c.vkey = ? ORDER BY 1",
                (int(vkey), int(vkey)),
            ).fetchall()
            for doc_id, text, meta, cut, start, stop in rows:
                if doc_id in seen:
                    continue
                seen.add(doc_id)
                text = text or ""
                whole = start < 0
                hits.append(
                    Hit(
                        doc_id,
                        float(score),
                        text,
                        json.loads(meta or "{}"),
                        bool(cut),
                        int(vkey),
                        0 if whole else int(start),
                        len(text) if whole else int(stop),
                        "" if whole else text[start:stop],
                    )
                )
                if len(hits) >= k:
                    return hits
        return hits

    def sample_vectors(self, limit: int, seed: int = 0) -> np.ndarray:
        """Up to ``limit`` documents' vectors as float32 (for calibration)."""
        index = self.rescore if self.rescore is not None else self.index
        vkeys = np.array([r[0] for r in self.db.execute("SELECT vkey FROM docs")], dtype=np.uint64)
        if not len(vkeys):
            return np.zeros((0, self.dims), dtype=np.float32)
        rng = np.random.default_rng(seed)
        vkeys = rng.choice(vkeys, size=min(limit, len(vkeys)), replace=False)
        return np.asarray(index.get(vkeys, dtype="f32"), dtype=np.float32).reshape(len(vkeys), self.dims)

    def touch_sync(self) -> None:
        self.set_state("synced_at", f"{time.time():.3f}")
