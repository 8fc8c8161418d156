"""The LMDB store: content-addressed vectors, documents, and a per-collection change log.

One :class:`Store` per process, opened after any fork and passed to whoever needs it (never a
global). A lock file keeps a second process (a second server, ``gc`` or ``reembed`` while the
server runs) from opening the same directory.

Named databases:
    meta         format version
    vectors      content hash (32 bytes) -> dtype tag + vector bytes (full dimensions)
    collections  name -> CollectionMeta (fingerprint, sequence, counters)
    docs         collection\\0doc id -> DocRecord (hash, index key, sequence, chunk table, text,
                 metadata); a chunked document's vectors are stored per chunk (content hash)
    logpos       collection\\0doc id -> (sequence of its latest change, index key); outlives deletes
    changes      collection\\0sequence -> (op, index key, doc id); one entry per doc: an older
                 entry is dropped when the doc changes again, so the log stays one row per id
    keys         collection\\0index key -> doc id (live documents)

A collection's other model versions (a migration's target, the version a cutover replaced) are
hidden collections under reserved names, renamed in one transaction at cutover and rollback:
see :mod:`server.store.versions`. :meth:`Store.collections` lists only the serving versions.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import lmdb
import numpy as np

from server.errors import StorageFull
from server.store import records as rec
from server.store import versions
from server.store.records import ChunkRef, CollectionMeta, DocRecord

log = logging.getLogger(__name__)

# 2: documents may be stored as several chunks (a chunk table in the document record), which
# a format-1 reader would misread; a format-1 store is a valid format-2 one and is marked 2 when
# opened.
FORMAT_VERSION = b"2"
_READABLE_FORMATS = (b"1", FORMAT_VERSION)
_STORE_DIR = "store"  # under the data directory
_LOCK_NAME = "store.lock"  # flock()ed by the process that has the store open; holds its pid
_DBS = ("meta", "vectors", "collections", "docs", "logpos", "changes", "keys")
T = TypeVar("T")


class StoreError(Exception):
    """The store cannot be opened or used as asked."""


class DiskFull(StorageFull, StoreError):
    """The disk holding the store has no room for a write; nothing of it was stored. A
    :class:`~server.errors.StorageFull` (RESOURCE_EXHAUSTED) for clients, a StoreError for tools."""


# Below this many free bytes, an LMDB write failure is put down to the full disk: LMDB reports
# ENOSPC at commit as EIO ("mdb_txn_commit: Input/output error", py-lmdb 3.0), and the file
# then grew until the disk was full, so a real full disk shows (almost) nothing free.
FULL_DISK_FREE_BYTES = 64 << 20


def free_bytes(path: Path) -> int | None:
    """Bytes free for this process on the filesystem holding ``path`` (None: cannot tell)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _mib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / (1 << 20):.1f} MiB"


class StaleCollection(StoreError):
    """A write or read would mix vectors of two models in one collection."""

    def __init__(self, collection: str, stored: str, serving: str) -> None:
        super().__init__(
            f"collection {collection!r} holds vectors of model {stored}, but the server runs "
            f"{serving}; run `embed-server reembed --collection {collection}` first"
        )
        self.collection = collection


class VectorsMissing(StoreError):
    """A document refers to a hash whose vector is gone (gc ran in between): embed again."""

    def __init__(self, hashes: set[bytes]) -> None:
        super().__init__(f"{len(hashes)} vectors missing")
        self.hashes = hashes


@dataclass(frozen=True)
class Upsert:
    collection: str
    doc_id: str
    content_hash: bytes
    text: str | None
    metadata: dict[str, Any]
    vector: np.ndarray | None = None  # None: the vector is already stored (cache hit)
    # A document stored as several chunks: every chunk (content_hash is then its whole text's,
    # with no vector under it), and the vectors of those chunks not stored yet (chunk content
    # hash -> (dims,) float32).
    chunks: tuple[ChunkRef, ...] = ()
    chunk_vectors: Mapping[bytes, np.ndarray] = field(default_factory=dict)

    @property
    def hashes(self) -> list[bytes]:
        return [c.content_hash for c in self.chunks] if self.chunks else [self.content_hash]

    def new_vectors(self) -> dict[bytes, np.ndarray]:
        """The vectors this upsert brings (content hash -> vector)."""
        out = dict(self.chunk_vectors)
        if self.vector is not None:
            out[self.content_hash] = self.vector
        return out


@dataclass(frozen=True)
class Change:
    sequence: int
    op: int  # records.OP_UPSERT | records.OP_DELETE
    key: int
    doc_id: str
    doc: DocRecord | None  # the current document for upserts


@dataclass(frozen=True)
class CollectionRow:
    """What Info reports per collection (embedding.v1.CollectionInfo)."""

    name: str
    documents: int
    sequence: int
    model_fingerprint: str
    stale: bool
    incarnation: str


class _RWLock:
    """Many readers or one writer. LMDB's set_mapsize needs no open transaction in the process."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._writer = True
            self._cond.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _describe_process(pid: str) -> str:
    """``process 1234 (embed-server serve)`` where /proc tells, else less. Options are left out:
    they may hold a token."""
    if not pid.isdigit():
        return "another process"
    try:
        argv = [
            a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a
        ]
    except OSError:
        return f"process {pid}"
    words = [Path(argv[0]).name] if argv else []
    for arg in argv[1:]:
        if arg.startswith("-") and arg != "-m":
            break
        words.append(arg)
    return f"process {pid} ({' '.join(words)})" if words else f"process {pid}"


def _lock(path: Path) -> TextIO:
    """The store's lock file, held exclusively by this process until closed; StoreError naming
    the holder when another process holds it."""
    lock_file = (path / _LOCK_NAME).open("a+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip()  # the holder's pid, written by Store
        lock_file.close()
        raise StoreError(
            f"the store in {path} is in use by {_describe_process(holder)}; stop it first "
            "(one process per data directory: a server, gc or reembed)"
        ) from None
    return lock_file


def store_in_use(data_dir: Path) -> str | None:
    """Blocking: why the store under ``data_dir`` cannot be removed or opened now (the process
    holding it, as :func:`open_store` would say), or None when no process holds it."""
    path = Path(data_dir) / _STORE_DIR
    if not (path / _LOCK_NAME).is_file():
        return None
    try:
        _lock(path).close()
    except StoreError as exc:
        return str(exc)
    return None


class Store:
    """Thread-safe; every method runs one short LMDB transaction (call from a worker thread)."""

    def __init__(self, path: Path, *, map_size: int = 1 << 30, float16: bool = False) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.float16 = float16
        # The model this process serves, when it serves one: sample_vectors() then skips
        # collections stored under another model (their vectors are not comparable).
        self.serving_fingerprint: str | None = None
        self._lock_file = _lock(self.path)
        self._lock_file.truncate(0)
        self._lock_file.write(f"{os.getpid()}\n")
        self._lock_file.flush()
        self._rw = _RWLock()
        try:
            self.env = self._open_env(map_size)
        except BaseException:
            self._lock_file.close()
            raise
        try:
            self._db = {name: self.env.open_db(name.encode()) for name in _DBS}
            self._check_format()
        except BaseException:
            self.env.close()
            self._lock_file.close()
            raise

    # -- plumbing ------------------------------------------------------------------------------

    def _damaged(self, why: str) -> StoreError:
        return StoreError(
            f"the store in {self.path} is damaged ({why}) and was not opened. Restore the data "
            f"directory from a backup, or move {self.path} aside to start with an empty store "
            "(its documents must then be ingested again; the indexes and the edge bundle are "
            "rebuilt from the store)"
        )

    def _open_env(self, map_size: int) -> Any:
        """Open the LMDB environment; StoreError (what to do) when its file is damaged. A file
        cut short is checked before any page past the two meta pages is read: LMDB maps the
        file, so reading a missing page is SIGBUS, not an error."""
        data = self.path / "lmdb" / "data.mdb"
        size = data.stat().st_size if data.is_file() else None
        if size is not None and size < 2 * 4096:  # an empty file would be taken for a new store
            raise self._damaged(f"{data} has {size} bytes, fewer than LMDB's two meta pages")
        try:
            env = lmdb.open(
                str(self.path / "lmdb"), map_size=map_size, max_dbs=len(_DBS), subdir=True, readahead=False
            )
        except (lmdb.InvalidError, lmdb.CorruptedError, lmdb.VersionMismatchError, lmdb.PanicError) as exc:
            raise self._damaged(str(exc)) from None
        if size is not None:
            needed = (int(env.info()["last_pgno"]) + 1) * int(env.stat()["psize"])
            if size < needed:
                env.close()
                raise self._damaged(f"{data} has {size:,} bytes, its pages need {needed:,}: it was cut short")
        return env

    def _check_format(self) -> None:
        def check(txn: Any) -> None:
            found = txn.get(b"format", db=self._db["meta"])
            if found is None or bytes(found) in _READABLE_FORMATS:
                txn.put(b"format", FORMAT_VERSION, db=self._db["meta"])
            else:
                raise StoreError(
                    f"store format {bytes(found).decode()} in {self.path} is not the supported "
                    f"format {FORMAT_VERSION.decode()}"
                )
            # Collections written before incarnations existed get theirs now (an optional field
            # of the same format: no version bump).
            db = self._db["collections"]
            for name, raw in list(txn.cursor(db=db)):
                meta = CollectionMeta.unpack(raw)
                if not meta.incarnation:
                    meta.incarnation = rec.new_incarnation()
                    txn.put(bytes(name), meta.pack(), db=db)

        self._write(check)

    def close(self) -> None:
        with self._rw.exclusive():
            self.env.close()
            self._lock_file.close()

    def _write(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn`` in one write transaction; a full map is grown and ``fn`` retried.
        DiskFull (nothing written) when the disk has no room for the transaction."""
        with self._rw.exclusive():
            while True:
                try:
                    with self.env.begin(write=True) as txn:
                        return fn(txn)
                except lmdb.MapFullError:
                    self._grow_map()
                except (lmdb.Error, OSError) as exc:
                    full = self._disk_full(exc)
                    if full is None:
                        raise
                    raise full from exc

    def _grow_map(self) -> None:
        """Double the map (sparse: no disk is used until pages are written); DiskFull when the
        map is already larger than the whole filesystem, where a bigger one cannot be filled."""
        size = int(self.env.info()["map_size"]) * 2
        try:
            total = shutil.disk_usage(self.path).total
        except OSError:
            total = None
        if total is not None and size > 2 * total:
            raise self._full_error(f"the store's map is full and {size >> 21} MiB is beyond the disk")
        log.info("LMDB map full; growing it to %d MiB", size >> 20)
        try:
            self.env.set_mapsize(size)
        except lmdb.Error as exc:
            raise self._full_error(f"growing the store's map to {size >> 20} MiB failed ({exc})") from exc

    def _disk_full(self, exc: BaseException) -> DiskFull | None:
        """The DiskFull that ``exc`` (a failed write) stands for, or None for another fault."""
        if isinstance(exc, OSError):
            return self._full_error(str(exc)) if exc.errno in (errno.ENOSPC, errno.EDQUOT) else None
        free = free_bytes(self.path)
        text = str(exc)
        if "No space" in text or "Disk quota" in text:
            return self._full_error(text)
        if ("Input/output error" in text or isinstance(exc, lmdb.DiskError)) and (
            free is not None and free < FULL_DISK_FREE_BYTES
        ):
            return self._full_error(text)
        return None

    def _full_error(self, detail: str) -> DiskFull:
        free = free_bytes(self.path)
        log.warning("store write refused, the disk is full (%s free): %s", _mib(free), detail)
        return DiskFull(
            f"the disk holding the data directory {self.path.parent} is full ({_mib(free)} free); "
            "this write was not stored: free some space there (or move --data-dir) and send it again"
        )

    def _read(self, fn: Callable[[Any], T]) -> T:
        with self._rw.shared(), self.env.begin() as txn:
            return fn(txn)

    def map_size(self) -> int:
        return int(self.env.info()["map_size"])

    # -- vectors -------------------------------------------------------------------------------

    def missing_hashes(self, hashes: Sequence[bytes]) -> set[bytes]:
        db = self._db["vectors"]
        return self._read(lambda txn: {h for h in set(hashes) if txn.get(h, db=db) is None})

    def vectors(self, hashes: Sequence[bytes]) -> np.ndarray:
        """Stored vectors for ``hashes`` (float32, one row each); KeyError for an unknown one."""
        db = self._db["vectors"]

        def read(txn: Any) -> list[np.ndarray]:
            rows = []
            for h in hashes:
                raw = txn.get(h, db=db)
                if raw is None:
                    raise KeyError(h.hex())
                rows.append(rec.unpack_vector(raw))
            return rows

        rows = self._read(read)
        return np.stack(rows) if rows else np.zeros((0, 0), np.float32)

    # -- collections ---------------------------------------------------------------------------

    def collection(self, name: str) -> CollectionMeta | None:
        raw = self._read(lambda txn: txn.get(name.encode(), db=self._db["collections"]))
        return None if raw is None else CollectionMeta.unpack(raw)

    def collections(self) -> dict[str, CollectionMeta]:
        def read(txn: Any) -> dict[str, CollectionMeta]:
            cursor = txn.cursor(db=self._db["collections"])
            rows = ((bytes(k).decode(), v) for k, v in cursor)
            return {name: CollectionMeta.unpack(v) for name, v in rows if not versions.is_hidden(name)}

        return self._read(read)

    # -- model versions (server.store.versions) ------------------------------------------------

    def begin_migration(self, collection: str, fingerprint: str, dimension: int) -> bool:
        """Start migrating ``collection`` to model ``fingerprint`` (vectors ``dimension`` wide),
        or resume the one in progress to the same model (True). VersionError: see
        :func:`server.store.versions.begin`."""
        now = time.time()
        return self._write(lambda txn: versions.begin(txn, self._db, collection, fingerprint, dimension, now))

    def migration(self, collection: str) -> versions.Migration | None:
        """The migration of ``collection`` in progress, if any."""
        return self._read(lambda txn: versions.read_migration(txn, self._db["meta"], collection))

    def retained(self, collection: str) -> versions.Retained | None:
        """The previous version of ``collection`` kept for rollback, if any."""
        return self._read(lambda txn: versions.read_retained(txn, self._db["meta"], collection))

    def mark_retained_behind(self, collection: str) -> None:
        """A write to ``collection`` did not reach its retained previous version: refuse
        rollbacks to it from now on."""
        self._write(lambda txn: versions.mark_behind(txn, self._db, collection))

    def abort_migration(self, collection: str) -> bool:
        """Drop ``collection``'s migration target; False when no migration was in progress."""
        return self._write(lambda txn: versions.abort(txn, self._db, collection))

    def cutover(self, collection: str) -> versions.Retained:
        """Bind ``collection`` to its migrated version in one transaction (MigrationIncomplete
        names documents still missing their new vectors; nothing changes then)."""
        now = time.time()
        return self._write(lambda txn: versions.cutover(txn, self._db, collection, now))

    def rollback(self, collection: str) -> versions.Retained:
        """Swap ``collection`` with its retained previous version in one transaction."""
        now = time.time()
        return self._write(lambda txn: versions.rollback(txn, self._db, collection, now))

    def expire_versions(self, retention_s: float) -> list[str]:
        """Drop the previous versions retired over ``retention_s`` seconds ago (their vectors go
        at the next :meth:`gc`); returns the collections they belonged to."""
        now = time.time()
        return self._write(lambda txn: versions.expire(txn, self._db, retention_s, now))

    def collection_rows(self, serving_fingerprint: str) -> list[CollectionRow]:
        """Info's collection list: counters, and stale = stored under another model."""
        return [
            CollectionRow(
                name,
                m.documents,
                m.sequence,
                m.fingerprint,
                m.fingerprint != serving_fingerprint,
                m.incarnation,
            )
            for name, m in sorted(self.collections().items())
        ]

    # -- writes --------------------------------------------------------------------------------

    def upsert(
        self,
        docs: Sequence[Upsert],
        *,
        fingerprint: str,
        dimension: int,
        expect_fingerprint: str | None = None,
    ) -> list[tuple[int, bool]]:
        """Store ``docs`` in one transaction; per doc (sequence, changed). An identical doc
        (same hash, text, metadata) is not logged again: it keeps its sequence.

        The collection must belong to ``fingerprint`` (a new one is created for it), or to
        ``expect_fingerprint`` when given: ``reembed`` rewrites a stale collection's documents
        while it stays marked stale, and only then switches it with :meth:`set_fingerprint`.
        """
        dbs = self._db
        required = expect_fingerprint or fingerprint

        def write(txn: Any) -> list[tuple[int, bool]]:
            metas: dict[str, CollectionMeta] = {}
            missing: set[bytes] = set()
            out: list[tuple[int, bool]] = []
            for doc in docs:
                meta = metas.get(doc.collection)
                if meta is None:
                    raw = txn.get(doc.collection.encode(), db=dbs["collections"])
                    meta = (
                        CollectionMeta(fingerprint, dimension, incarnation=rec.new_incarnation())
                        if raw is None
                        else CollectionMeta.unpack(raw)
                    )
                    if meta.fingerprint != required:
                        raise StaleCollection(doc.collection, meta.fingerprint, fingerprint)
                    metas[doc.collection] = meta
                provided = doc.new_vectors()
                for chash in doc.hashes:
                    vector = provided.get(chash)
                    if vector is not None:
                        txn.put(chash, rec.pack_vector(vector, self.float16), db=dbs["vectors"])
                    elif txn.get(chash, db=dbs["vectors"]) is None:
                        missing.add(chash)
                out.append(self._upsert_one(txn, meta, doc))
            if missing:
                raise VectorsMissing(missing)  # aborts the transaction: nothing half-written
            for name, meta in metas.items():
                txn.put(name.encode(), meta.pack(), db=dbs["collections"])
            return out

        return self._write(write)

    def _upsert_one(self, txn: Any, meta: CollectionMeta, doc: Upsert) -> tuple[int, bool]:
        dbs = self._db
        dkey = rec.doc_key(doc.collection, doc.doc_id)
        old_raw = txn.get(dkey, db=dbs["docs"])
        old = None if old_raw is None else rec.unpack_doc(old_raw)
        if (
            old is not None
            and old.content_hash == doc.content_hash
            and old.text == doc.text
            and old.metadata == doc.metadata
            and old.chunks == doc.chunks
        ):
            return old.sequence, False
        pos_raw = txn.get(dkey, db=dbs["logpos"])
        if pos_raw is not None:
            old_seq, key = rec.unpack_logpos(pos_raw)
            txn.delete(rec.seq_key(doc.collection, old_seq), db=dbs["changes"])
        else:
            key = meta.next_key
            meta.next_key += 1
        meta.sequence += 1
        seq = meta.sequence
        if old is None:
            meta.documents += 1
            txn.put(rec.int_key(doc.collection, key), doc.doc_id.encode(), db=dbs["keys"])
        record = DocRecord(doc.content_hash, key, seq, doc.text, doc.metadata, doc.chunks)
        txn.put(dkey, rec.pack_doc(record), db=dbs["docs"])
        txn.put(dkey, rec.pack_logpos(seq, key), db=dbs["logpos"])
        txn.put(
            rec.seq_key(doc.collection, seq),
            rec.pack_change(rec.OP_UPSERT, key, doc.doc_id),
            db=dbs["changes"],
        )
        return seq, True

    def delete(self, collection: str, doc_ids: Sequence[str]) -> tuple[int, int]:
        """Delete documents; returns (how many existed, collection sequence afterwards)."""
        dbs = self._db

        def write(txn: Any) -> tuple[int, int]:
            raw = txn.get(collection.encode(), db=dbs["collections"])
            if raw is None:
                return 0, 0
            meta = CollectionMeta.unpack(raw)
            deleted = 0
            for doc_id in dict.fromkeys(doc_ids):
                dkey = rec.doc_key(collection, doc_id)
                old_raw = txn.get(dkey, db=dbs["docs"])
                if old_raw is None:
                    continue
                old = rec.unpack_doc(old_raw)
                old_seq, key = rec.unpack_logpos(txn.get(dkey, db=dbs["logpos"]))
                txn.delete(rec.seq_key(collection, old_seq), db=dbs["changes"])
                meta.sequence += 1
                meta.documents -= 1
                deleted += 1
                txn.delete(dkey, db=dbs["docs"])
                txn.delete(rec.int_key(collection, old.key), db=dbs["keys"])
                txn.put(dkey, rec.pack_logpos(meta.sequence, key), db=dbs["logpos"])
                change = rec.pack_change(rec.OP_DELETE, key, doc_id)
                txn.put(rec.seq_key(collection, meta.sequence), change, db=dbs["changes"])
            txn.put(collection.encode(), meta.pack(), db=dbs["collections"])
            return deleted, meta.sequence

        return self._write(write)

    def drop_collection(self, collection: str) -> int | None:
        """Remove ``collection``: its header, documents, change log, log positions and keys, in
        one transaction; returns how many documents it held (None: no such collection). Its
        vectors stay (other collections may share them; ``gc`` drops unused ones)."""
        dbs = self._db
        pfx = rec.prefix(collection)

        def write(txn: Any) -> int | None:
            raw = txn.get(collection.encode(), db=dbs["collections"])
            if raw is None:
                return None
            for name in ("docs", "logpos", "changes", "keys"):
                cursor = txn.cursor(db=dbs[name])
                if not cursor.set_range(pfx):
                    continue
                while bytes(cursor.key()).startswith(pfx):
                    if not cursor.delete():  # moves to the next record; False at the end
                        break
            txn.delete(collection.encode(), db=dbs["collections"])
            if not versions.is_hidden(collection):
                versions.forget(txn, dbs, collection)
            return CollectionMeta.unpack(raw).documents

        return self._write(write)

    def set_fingerprint(self, collection: str, fingerprint: str, dimension: int) -> None:
        """After ``reembed`` rewrote every document: the collection now belongs to this model."""

        def write(txn: Any) -> None:
            raw = txn.get(collection.encode(), db=self._db["collections"])
            if raw is None:
                raise StoreError(f"no collection {collection!r}")
            meta = CollectionMeta.unpack(raw)
            meta.fingerprint, meta.dimension = fingerprint, dimension
            txn.put(collection.encode(), meta.pack(), db=self._db["collections"])

        self._write(write)

    def gc(self) -> tuple[int, int]:
        """Drop vectors no document references; returns (removed, kept)."""
        dbs = self._db

        def write(txn: Any) -> tuple[int, int]:
            live = {
                chash
                for v in txn.cursor(db=dbs["docs"]).iternext(keys=False, values=True)
                for chash in rec.unpack_doc_hashes_key(v)[0]
            }
            dead = [bytes(k) for k in txn.cursor(db=dbs["vectors"]).iternext(keys=True, values=False)]
            dead = [h for h in dead if h not in live]
            for h in dead:
                txn.delete(h, db=dbs["vectors"])
            return len(dead), len(live)

        return self._write(write)

    # -- reads ---------------------------------------------------------------------------------

    def documents(self, collection: str, doc_ids: Sequence[str]) -> list[DocRecord | None]:
        db = self._db["docs"]

        def read(txn: Any) -> list[DocRecord | None]:
            raws = [txn.get(rec.doc_key(collection, d), db=db) for d in doc_ids]
            return [None if r is None else rec.unpack_doc(r) for r in raws]

        return self._read(read)

    def metadata_rows(self, collection: str, batch: int = 4096) -> tuple[list[str], list[dict[str, Any]]]:
        """(ids, metadata) of every live document of ``collection`` in id order (the order of
        :meth:`iter_documents` and :meth:`chunk_matrix`); texts are not decoded."""
        ids: list[str] = []
        metadata: list[dict[str, Any]] = []
        for rows in self._doc_pages(collection, batch, rec.unpack_doc_metadata):
            for key, meta in rows:
                ids.append(rec.suffix_str(key))
                metadata.append(meta)
        return ids, metadata

    def collection_bytes(self, collection: str) -> tuple[int, int]:
        """(bytes of the collection's document records, bytes of the distinct stored vectors
        they use), read in one transaction."""
        dbs = self._db
        pfx = rec.prefix(collection)

        def read(txn: Any) -> tuple[int, int]:
            cursor = txn.cursor(db=dbs["docs"])
            documents = 0
            hashes: set[bytes] = set()
            if cursor.set_range(pfx):
                for k, v in cursor:
                    if not bytes(k).startswith(pfx):
                        break
                    documents += len(k) + len(v)
                    hashes.update(rec.unpack_doc_hashes_key(v)[0])
            vectors = 0
            for chash in hashes:
                raw = txn.get(chash, db=dbs["vectors"])
                vectors += 0 if raw is None else len(raw)
            return documents, vectors

        return self._read(read)

    def ids_for_keys(self, collection: str, keys: Sequence[int]) -> list[str | None]:
        db = self._db["keys"]

        def read(txn: Any) -> list[str | None]:
            raws = [txn.get(rec.int_key(collection, int(k)), db=db) for k in keys]
            return [None if r is None else bytes(r).decode() for r in raws]

        return self._read(read)

    def iter_documents(self, collection: str, batch: int = 1024) -> Iterator[list[tuple[str, DocRecord]]]:
        """Documents of ``collection`` in id order, ``batch`` per short read transaction."""
        for rows in self._doc_pages(collection, batch, rec.unpack_doc):
            yield [(rec.suffix_str(k), d) for k, d in rows]

    def content_keys(self, collection: str, batch: int = 16384) -> Iterator[list[tuple[int, list[bytes]]]]:
        """(index key, content hashes: one per chunk) of every live document of ``collection``,
        ``batch`` per short read transaction; reads the header and chunk table only (no text is
        decompressed)."""
        for rows in self._doc_pages(collection, batch, rec.unpack_doc_hashes_key):
            yield [(ikey, hashes) for _, (hashes, ikey) in rows]

    def _doc_pages(
        self, collection: str, batch: int, unpack: Callable[[Any], T]
    ) -> Iterator[list[tuple[bytes, T]]]:
        """(key, unpack(value)) of the collection's documents in key order, ``batch`` per read."""
        pfx = rec.prefix(collection)
        start = pfx
        while True:

            def read(txn: Any, after: bytes = start) -> list[tuple[bytes, T]]:
                cursor = txn.cursor(db=self._db["docs"])
                out: list[tuple[bytes, T]] = []
                if not cursor.set_range(after):
                    return out
                for k, v in cursor:
                    key = bytes(k)
                    if not key.startswith(pfx):
                        break
                    if key == after and after != pfx:
                        continue
                    out.append((key, unpack(v)))
                    if len(out) >= batch:
                        break
                return out

            rows = self._read(read)
            if not rows:
                return
            yield rows
            start = rows[-1][0]

    def matrix(self, collection: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Every vector of ``collection``'s live documents, one row per chunk (a document stored
        as several chunks has several rows, in chunk order): (index keys int64 (n,), ids (n),
        vectors float32 (n, dims))."""
        keys, ids, _ordinals, vectors = self.chunk_matrix(collection)
        return keys, ids, vectors

    def chunk_matrix(self, collection: str) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
        """:meth:`matrix` with each row's chunk ordinal: (index keys int64 (n,), ids (n),
        ordinals int32 (n,), vectors float32 (n, dims))."""
        keys: list[int] = []
        ids: list[str] = []
        ordinals: list[int] = []
        hashes: list[bytes] = []
        for rows in self.iter_documents(collection, batch=4096):
            for doc_id, doc in rows:
                for ordinal, chash in enumerate(doc.hashes):
                    keys.append(doc.key)
                    ids.append(doc_id)
                    ordinals.append(ordinal)
                    hashes.append(chash)
        meta = self.collection(collection)
        dims = meta.dimension if meta else 0
        vectors = self.vectors(hashes) if hashes else np.zeros((0, dims), np.float32)
        return np.asarray(keys, dtype=np.int64), ids, np.asarray(ordinals, dtype=np.int32), vectors

    def changes(self, collection: str, since: int, until: int, limit: int) -> list[Change]:
        """Up to ``limit`` log entries with since < sequence <= until, in sequence order."""
        dbs = self._db

        def read(txn: Any) -> list[Change]:
            cursor = txn.cursor(db=dbs["changes"])
            out: list[Change] = []
            if not cursor.set_range(rec.seq_key(collection, since + 1)):
                return out
            pfx = rec.prefix(collection)
            for k, v in cursor:
                key = bytes(k)
                seq = rec.suffix_u64(key)
                if not key.startswith(pfx) or len(key) != len(pfx) + 8 or seq > until:
                    break
                op, ikey, doc_id = rec.unpack_change(v)
                doc = None
                if op == rec.OP_UPSERT:
                    raw = txn.get(rec.doc_key(collection, doc_id), db=dbs["docs"])
                    doc = None if raw is None else rec.unpack_doc(raw)
                out.append(Change(seq, op, ikey, doc_id, doc))
                if len(out) >= limit:
                    break
            return out

        return self._read(read)

    def count_changes(self, collection: str, since: int, until: int) -> int:
        """How many log entries have since < sequence <= until (reads keys only)."""
        db = self._db["changes"]
        pfx = rec.prefix(collection)

        def read(txn: Any) -> int:
            cursor = txn.cursor(db=db)
            if not cursor.set_range(rec.seq_key(collection, since + 1)):
                return 0
            total = 0
            for k in cursor.iternext(keys=True, values=False):
                key = bytes(k)
                if not key.startswith(pfx) or len(key) != len(pfx) + 8 or rec.suffix_u64(key) > until:
                    break
                total += 1
            return total

        return self._read(read)

    def sample_vectors(
        self, n: int, *, collection: str | None = None, fingerprint: str | None = None, seed: int = 0
    ) -> np.ndarray:
        """Up to ``n`` distinct full-dimension vectors (float32) of one collection or of all
        collections, sampled uniformly; only collections stored under ``fingerprint`` (default:
        :attr:`serving_fingerprint`, when set). Empty: shape (0, 0)."""
        return self.sample_documents(n, collection=collection, fingerprint=fingerprint, seed=seed)[0]

    def sample_documents(
        self, n: int, *, collection: str | None = None, fingerprint: str | None = None, seed: int = 0
    ) -> tuple[np.ndarray, list[str | None]]:
        """:meth:`sample_vectors` (same sample for the same arguments) with one stored text per
        vector (the first document found with that content; None when stored without text)."""
        fingerprint = fingerprint or self.serving_fingerprint
        metas = self.collections()
        names = [collection] if collection is not None else list(metas)
        texts: dict[bytes, str | None] = {}
        for name in names:
            meta = metas.get(name)
            if meta is None or (fingerprint is not None and meta.fingerprint != fingerprint):
                continue
            for rows in self.iter_documents(name, batch=4096):
                for _, doc in rows:
                    for ordinal, chash in enumerate(doc.hashes):
                        if texts.get(chash) is None:
                            start, stop = doc.span(ordinal)
                            texts[chash] = None if doc.text is None else doc.text[start:stop]
        ordered = sorted(texts)
        if len(ordered) > n:
            picks = np.random.default_rng(seed).choice(len(ordered), size=n, replace=False)
            ordered = [ordered[int(i)] for i in np.sort(picks)]
        if not ordered:
            return np.zeros((0, 0), np.float32), []
        return self.vectors(ordered), [texts[h] for h in ordered]


def open_store(data_dir: Path, *, map_size: int = 1 << 30, float16: bool = False) -> Store:
    """Open (creating if needed) the store under ``data_dir``; call once per process, after fork."""
    os.makedirs(data_dir, exist_ok=True)
    return Store(Path(data_dir) / _STORE_DIR, map_size=map_size, float16=float16)
