"""Per-collection BM25 indexes over the stored texts (bm25s), derived from the store.

Like the vector index, a lexical index is a cache of the store, kept in step through the
collection's change log; unlike it, a bm25s index cannot gain or lose a document (its sparse
score matrix is built at once), so it is kept in step in two parts:

- **Removals are exact and immediate.** Each row remembers the sequence of the document version
  it indexed. Every search (and every Ingest / Delete, through :meth:`LexicalIndexes.touch`)
  reads the change log after the last sequence seen; a change of a row's document after that
  row's sequence (a delete, or an update: new text) masks the row out. A deleted document is
  never returned, and an updated one is never found by its old words. A masked row still counts
  in BM25's statistics (document frequencies, average length) until the next rebuild, which is
  scheduled as for additions.
- **Additions wait for a rebuild.** New and updated texts are counted as pending and a background
  thread rebuilds the index from the store once changes pause for :data:`DEBOUNCE_S` (at most
  :data:`MAX_WAIT_S` after the first pending change while they keep coming), and no sooner after
  the previous rebuild than it took (so rebuilding takes at most half of one core). The rebuild
  reads every live document's text, so a newly acknowledged document is findable within about
  DEBOUNCE_S + the rebuild's time (0.7 s for SciFact's 5,183 abstracts here) while a collection
  is idle, and within MAX_WAIT_S + two rebuilds while writes keep coming.
  :meth:`LexicalIndex.reflected` is the sequence up to which the index reflects the collection
  (Search reports it).

Documents stored without text have no row. Tokenization is bm25s's (lowercase, words of 2+ word
characters, its English stop words) with the Snowball English stemmer (PyStemmer); queries are
tokenized the same way; scoring is bm25s's defaults (Lucene's BM25, k1 = 1.5, b = 0.75).

Files, per collection, under ``<indexes>/lexical/``: ``<digest>.<gen>/`` (bm25s's own files plus
``rows.json``, the id of each row, and ``seqs.npy``, its document sequence), written after each
build, then ``<digest>.json`` naming generation ``<gen>``, the collection's incarnation and the
sequence read before the build's scan: its rename commits the save. At start a saved index of
the same incarnation and tokenizer is loaded when it is up to date with the store; one behind
it (any change since its build), damaged or missing is rebuilt from the store before the
collection is served.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np
import Stemmer

from server.store import records as rec
from server.store.lmdb_store import Store

log = logging.getLogger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every build at DEBUG

FORMAT = 1
# What a saved index must have been tokenized with to be loaded (a change rebuilds it).
TOKENIZER = {"lower": True, "stopwords": "en", "stemmer": "english", "library": "bm25s"}
DEBOUNCE_S = 0.5
MAX_WAIT_S = 5.0
_PAGE = 4096  # change-log entries per read
_RETRY_S = 30.0  # after a failed rebuild


class _Closed(Exception):
    """The indexes were closed while a build was reading the store."""


def tokenize(texts: list[str]) -> list[list[str]]:
    """Lowercased, stop words removed, stemmed (one new stemmer per call: they are not shared
    across threads)."""
    stemmer = Stemmer.Stemmer(TOKENIZER["stemmer"])
    out = bm25s.tokenize(
        texts, stopwords=TOKENIZER["stopwords"], stemmer=stemmer, return_ids=False, show_progress=False
    )
    return [list(tokens) for tokens in out]


@dataclass(frozen=True)
class _Snapshot:
    """One build: immutable once made."""

    sequence: int  # the collection's head read before the build's scan
    incarnation: str
    ids: list[str]
    seqs: np.ndarray  # (rows,) int64: the sequence of the document version each row indexed
    model: bm25s.BM25 | None  # None when no document has text

    def row_of(self) -> dict[str, int]:
        return {doc_id: row for row, doc_id in enumerate(self.ids)}


class LexicalIndex:
    """One collection's BM25 index (see the module docstring). Thread-safe."""

    def __init__(self, collection: str, snapshot: _Snapshot) -> None:
        self.collection = collection
        self.lock = threading.Lock()
        self._install(snapshot)
        self.generation = 0
        self.rebuilds = 0
        self.last_build_s = 0.0
        self.last_build_end = 0.0

    def _install(self, snapshot: _Snapshot) -> None:
        self.snapshot = snapshot
        self._rows = snapshot.row_of()
        self.masked = np.zeros(len(snapshot.ids), dtype=bool)
        self.seen = snapshot.sequence  # the change log was read up to here
        self.pending = 0  # texts added or changed since the snapshot (not searchable yet)
        self.changed = 0  # rows masked or texts pending since the snapshot: a rebuild is due
        self.first_change = 0.0  # monotonic time of the first of them
        self.last_change = 0.0

    @property
    def incarnation(self) -> str:
        return self.snapshot.incarnation

    def reflected(self) -> int:
        """The collection sequence this index answers for: everything up to it is searchable
        (removals always are; additions after a rebuild)."""
        with self.lock:
            return self.seen if self.pending == 0 else self.snapshot.sequence

    def catch_up(self, store: Store) -> int:
        """Read the change log after the last sequence seen: mask the rows of changed documents,
        count the texts waiting for a rebuild. Returns how many are pending."""
        with self.lock:
            head = store.collection(self.collection)
            until = head.sequence if head is not None else self.seen
            while self.seen < until:
                changes = store.changes(self.collection, self.seen, until, _PAGE)
                if not changes:
                    self.seen = until
                    break
                now = time.monotonic()
                for change in changes:
                    row = self._rows.get(change.doc_id)
                    indexed = -1 if row is None else int(self.snapshot.seqs[row])
                    if change.sequence <= indexed:
                        continue  # the build already read this version
                    doc = change.doc
                    added = change.op == rec.OP_UPSERT and doc is not None and bool(doc.text)
                    if row is None and not added:
                        continue  # a document this index never had, gone or without text
                    if row is not None:
                        self.masked[row] = True
                    if added:
                        self.pending += 1
                    if self.changed == 0:
                        self.first_change = now
                    self.changed += 1
                    self.last_change = now
                self.seen = changes[-1].sequence
            return self.pending

    def due_at(self) -> float | None:
        """Monotonic time the next rebuild is due, None when nothing changed since the build."""
        with self.lock:
            if self.changed == 0:
                return None
            quiet = min(self.last_change + DEBOUNCE_S, self.first_change + MAX_WAIT_S)
            return max(quiet, self.last_build_end + self.last_build_s)

    def search(
        self, query: str, depth: int, allow: Callable[[list[str]], np.ndarray] | None = None
    ) -> tuple[list[tuple[str, float]], int]:
        """(id, BM25 score) of the best ``depth`` documents that match a query term, best first;
        the sequence that answer reflects (read with the rows it searched). ``allow``: given
        ids, a bool array of those a metadata filter keeps (only they are ranked)."""
        terms = tokenize([query])[0]
        with self.lock:
            snapshot, masked = self.snapshot, self.masked.copy()
            reflected = self.seen if self.pending == 0 else snapshot.sequence
        model = snapshot.model
        if model is None:
            return [], reflected
        vocab = model.vocab_dict
        term_ids = [vocab[t] for t in terms if t in vocab and t != ""]
        if not term_ids:
            return [], reflected
        scores = np.asarray(model.get_scores_from_ids(term_ids), dtype=np.float32)
        scores[masked] = 0.0
        matched = np.flatnonzero(scores > 0)
        if allow is not None and len(matched):
            matched = matched[allow([snapshot.ids[i] for i in matched])]
        if len(matched) > depth:
            matched = matched[np.argpartition(-scores[matched], depth)[:depth]]
        order = matched[np.argsort(-scores[matched], kind="stable")]
        return [(snapshot.ids[i], float(scores[i])) for i in order], reflected

    def nbytes(self) -> int:
        model = self.snapshot.model
        if model is None:
            return 0
        return int(sum(np.asarray(model.scores[k]).nbytes for k in ("data", "indices", "indptr")))


def build_snapshot(store: Store, collection: str, closed: threading.Event | None = None) -> _Snapshot | None:
    """A fresh index of every live document's text (None: no such collection)."""
    meta = store.collection(collection)
    if meta is None:
        return None
    ids: list[str] = []
    seqs: list[int] = []
    texts: list[str] = []
    for rows in store.iter_documents(collection, batch=1024):
        if closed is not None and closed.is_set():
            raise _Closed
        for doc_id, doc in rows:
            if doc.text:
                ids.append(doc_id)
                seqs.append(doc.sequence)
                texts.append(doc.text)
    model = None
    if ids:
        stemmer = Stemmer.Stemmer(TOKENIZER["stemmer"])
        tokenized = bm25s.tokenize(
            texts, stopwords=TOKENIZER["stopwords"], stemmer=stemmer, return_ids=True, show_progress=False
        )
        del texts
        if closed is not None and closed.is_set():
            raise _Closed
        model = bm25s.BM25()
        model.index(tokenized, show_progress=False)
    return _Snapshot(meta.sequence, meta.incarnation, ids, np.asarray(seqs, dtype=np.int64), model)


class LexicalIndexes:
    """Every collection's lexical index, loaded or built on first use, and the thread that
    rebuilds them (see the module docstring). :meth:`close` stops the thread."""

    def __init__(self, store: Store, directory: Path) -> None:
        self.store, self.directory = store, Path(directory)
        self._lock = threading.Lock()
        self._indexes: dict[str, LexicalIndex] = {}
        self._cond = threading.Condition()
        self._touched: set[str] = set()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lexical-rebuild", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def touch(self, collection: str) -> None:
        """The collection changed (an Ingest commit, a Delete): catch up in the background."""
        with self._cond:
            self._touched.add(collection)
            self._cond.notify_all()

    # -- use ----------------------------------------------------------------------------------

    def get(self, collection: str) -> LexicalIndex | None:
        """The collection's index, loaded or built on first use (or when the collection was
        created again), caught up with the change log; None when there is no such collection."""
        meta = self.store.collection(collection)
        with self._lock:
            index = self._indexes.get(collection)
            if meta is None:
                self._indexes.pop(collection, None)
                return None
            if index is None or index.incarnation != meta.incarnation:
                index = self._load(collection, meta.incarnation)
                if index is None or index.catch_up(self.store) or index.changed:
                    why = "missing or stale" if index is None else "behind the store"  # even by deletes
                    log.info("lexical index %r %s: building it from the store", collection, why)
                    index = self._build(collection, index)
                if index is None:
                    return None
                self._indexes[collection] = index
        index.catch_up(self.store)
        if index.changed:
            self.touch(collection)  # the rebuild thread schedules it
        return index

    def search(
        self, collection: str, query: str, depth: int, allow: Callable[[list[str]], np.ndarray] | None = None
    ) -> tuple[list[tuple[str, float]], int]:
        """(id, BM25 score) of the best ``depth`` matches (among those ``allow`` keeps, when
        given: see :meth:`LexicalIndex.search`), and the sequence reflected."""
        index = self.get(collection)
        if index is None:
            return [], 0
        return index.search(query, depth, allow)

    def drop(self, collection: str) -> None:
        """Forget ``collection``'s index and remove its files (the collection was dropped)."""
        with self._lock:
            self._indexes.pop(collection, None)
        stem = self._stem(collection)
        with contextlib.suppress(FileNotFoundError):
            stem.with_suffix(".json").unlink()
        for old in stem.parent.glob(f"{stem.name}.*"):
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)

    def nbytes_of(self, collection: str) -> int:
        """Bytes of ``collection``'s saved index files."""
        stem = self._stem(collection)
        files = [stem.with_suffix(".json"), *stem.parent.glob(f"{stem.name}.*/*")]
        return sum(p.stat().st_size for p in files if p.is_file())

    def nbytes(self) -> int:
        if not self.directory.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file())

    # -- build, load, save ----------------------------------------------------------------------

    def _build(self, collection: str, index: LexicalIndex | None) -> LexicalIndex | None:
        started = time.monotonic()
        snapshot = build_snapshot(self.store, collection, self._closed)
        if snapshot is None:
            return None
        if self._closed.is_set() and self._thread is not None and threading.current_thread() is self._thread:
            raise _Closed  # the store is being closed: nothing more may read it
        if index is None or index.incarnation != snapshot.incarnation:
            index = LexicalIndex(collection, snapshot)
        else:
            with index.lock:
                index._install(snapshot)
        index.rebuilds += 1
        index.last_build_end = time.monotonic()
        index.last_build_s = index.last_build_end - started
        index.catch_up(self.store)  # what was committed during the build
        if threading.current_thread() is self._thread:  # (get() builds holding self._lock)
            with self._lock:
                dropped = index is not self._indexes.get(collection)
            if dropped:  # the collection was dropped while the rebuild thread built it
                return None
        log.debug(
            "lexical index %r built: %d rows at sequence %d in %.2f s",
            collection,
            len(snapshot.ids),
            snapshot.sequence,
            index.last_build_s,
        )
        try:
            self._save(index, snapshot)
        except Exception as exc:  # a full disk: the index is a cache, rebuilt at the next start
            log.warning("saving the lexical index of %r failed: %s", collection, exc)
        return index

    def _stem(self, collection: str) -> Path:
        return self.directory / hashlib.sha256(collection.encode()).hexdigest()[:24]

    def _header(self, collection: str) -> dict[str, object]:
        return {"collection": collection, "format": FORMAT, "tokenizer": TOKENIZER}

    def _save(self, index: LexicalIndex, snapshot: _Snapshot) -> None:
        stem = self._stem(index.collection)
        self.directory.mkdir(parents=True, exist_ok=True)
        generation = index.generation + 1
        folder = stem.with_name(f"{stem.name}.{generation}")
        sidecar = stem.with_suffix(".json")
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        try:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            if snapshot.model is not None:
                snapshot.model.save(str(folder), show_progress=False)
            (folder / "rows.json").write_text(json.dumps(snapshot.ids))
            np.save(folder / "seqs.npy", snapshot.seqs)
            meta = {
                **self._header(index.collection),
                "incarnation": snapshot.incarnation,
                "sequence": snapshot.sequence,
                "generation": generation,
                "rows": len(snapshot.ids),
            }
            tmp.write_text(json.dumps(meta))
            os.replace(tmp, sidecar)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        index.generation = generation
        for old in stem.parent.glob(f"{stem.name}.*"):
            if old.is_dir() and old != folder:
                shutil.rmtree(old, ignore_errors=True)

    def _load(self, collection: str, incarnation: str) -> LexicalIndex | None:
        """The saved index when it was made for this incarnation and tokenizer; None otherwise
        (damaged files are logged and rebuilt over)."""
        stem = self._stem(collection)
        try:
            meta = json.loads(stem.with_suffix(".json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("lexical index %r: unreadable sidecar (%s); rebuilding it", collection, exc)
            return None
        if not isinstance(meta, dict) or meta.get("incarnation") != incarnation:
            return None
        if {k: meta.get(k) for k in self._header(collection)} != self._header(collection):
            return None
        try:
            generation = int(meta["generation"])
            folder = stem.with_name(f"{stem.name}.{generation}")
            ids = json.loads((folder / "rows.json").read_text())
            seqs = np.load(folder / "seqs.npy")
            model = bm25s.BM25.load(str(folder)) if ids else None
            if len(seqs) != len(ids) or (model is not None and model.scores["num_docs"] != len(ids)):
                raise ValueError("rows do not match the saved index")
            snapshot = _Snapshot(int(meta["sequence"]), incarnation, list(ids), seqs.astype(np.int64), model)
        except Exception as exc:  # any damage of a cache file means: rebuild it
            log.warning(
                "lexical index %r: damaged files (%s: %s); rebuilding it", collection, type(exc).__name__, exc
            )
            return None
        index = LexicalIndex(collection, snapshot)
        index.generation = generation
        log.info("lexical index %r loaded at sequence %d", collection, snapshot.sequence)
        return index

    # -- the rebuild thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed.is_set():
            with self._cond:
                touched, self._touched = self._touched, set()
            with self._lock:
                loaded = dict(self._indexes)
            for name in touched:
                if name in loaded:
                    try:
                        loaded[name].catch_up(self.store)
                    except Exception:
                        log.exception("lexical index %r: catching up failed", name)
            now = time.monotonic()
            due = {name: at for name, index in loaded.items() if (at := index.due_at()) is not None}
            ready = [name for name, at in due.items() if at <= now]
            for name in ready:
                if self._closed.is_set():
                    return
                with self._lock:
                    index = self._indexes.get(name)
                if index is None:
                    continue
                try:
                    self._build(name, index)
                except _Closed:
                    return
                except Exception:
                    log.exception("lexical index %r: rebuilding failed; retrying in %.0f s", name, _RETRY_S)
                    index.last_build_end, index.last_build_s = time.monotonic(), _RETRY_S
            if ready:
                continue
            with self._cond:
                if self._touched or self._closed.is_set():
                    continue
                wait = min(due.values()) - now if due else None
                self._cond.wait(wait)
