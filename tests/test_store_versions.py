"""Model versions of a collection in the store (server.store.versions), on a real LMDB: a
migration target is hidden, the cutover refuses while a document lacks its new version and
then swaps in one transaction, rollback swaps back without writing a vector, gc drops the
previous version only after the retention."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.store import Store, Upsert, content_hash, open_store
from server.store.versions import NEXT, PREV, MigrationIncomplete, VersionError, hidden

A, B = "model-a@0001", "model-b@0002"
DIMS_A, DIMS_B = 8, 4


def _up(collection: str, fp: str, doc_id: str, text: str, dims: int, meta: dict | None = None) -> Upsert:  # type: ignore[type-arg]
    h = content_hash(fp, "", text)
    vector = np.random.default_rng(int.from_bytes(h[:8], "little")).standard_normal(dims).astype(np.float32)
    return Upsert(collection, doc_id, h, text, meta or {}, vector)


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = open_store(tmp_path)
    yield s
    s.close()


def _fill(store: Store, n: int = 5) -> None:
    store.upsert(
        [_up("c", A, f"d{i}", f"text {i}", DIMS_A) for i in range(n)], fingerprint=A, dimension=DIMS_A
    )


def _copy_all(store: Store) -> None:
    target = hidden("c", NEXT)
    docs = [(i, d) for rows in store.iter_documents("c") for i, d in rows]
    store.upsert(
        [_up(target, B, i, d.text or "", DIMS_B, d.metadata) for i, d in docs],
        fingerprint=B,
        dimension=DIMS_B,
    )


def test_migration_cutover_rollback_and_gc(store: Store) -> None:
    _fill(store)
    incarnation = store.collection("c").incarnation  # type: ignore[union-attr]
    assert store.begin_migration("c", B, DIMS_B) is False
    assert store.begin_migration("c", B, DIMS_B) is True  # resumed
    assert list(store.collections()) == ["c"]  # the target is hidden
    assert store.migration("c") is not None and store.migration("c").to == B  # type: ignore[union-attr]
    # Nothing copied yet: the cutover refuses and changes nothing.
    with pytest.raises(MigrationIncomplete, match="5 documents have no vector of the new model") as info:
        store.cutover("c")
    assert info.value.missing == [f"d{i}" for i in range(5)]
    assert store.collection("c").fingerprint == A  # type: ignore[union-attr]
    _copy_all(store)
    # A document changed in the serving version after it was copied: refused again.
    store.upsert([_up("c", A, "d1", "text 1", DIMS_A, {"v": 2})], fingerprint=A, dimension=DIMS_A)
    with pytest.raises(MigrationIncomplete) as info:
        store.cutover("c")
    assert info.value.missing == ["d1"]
    _copy_all(store)
    store.delete("c", ["d4"])  # deleted after it was copied: dropped from the target at cutover
    retained = store.cutover("c")
    assert store.gc() == (2, 8)  # d4 under A (deleted) and B (dropped at cutover); 4 + 4 kept
    meta = store.collection("c")
    assert meta is not None and (meta.fingerprint, meta.dimension, meta.documents) == (B, DIMS_B, 4)
    assert meta.incarnation != incarnation  # edges and indexes start it afresh
    assert retained.fingerprint == A and store.migration("c") is None
    assert store.collection(hidden("c", PREV)).fingerprint == A  # type: ignore[union-attr]
    assert store.collection(hidden("c", NEXT)) is None
    _keys, ids, vectors = store.matrix("c")
    assert sorted(ids) == ["d0", "d1", "d2", "d3"] and vectors.shape == (4, DIMS_B)
    assert store.documents("c", ["d1"])[0].metadata == {"v": 2}  # type: ignore[union-attr]

    # Rollback: the old version serves again; not one vector written.
    store.rollback("c")
    meta = store.collection("c")
    assert meta is not None and (meta.fingerprint, meta.documents) == (A, 4)
    assert store.matrix("c")[2].shape == (4, DIMS_A)
    assert store.gc() == (0, 8)
    store.rollback("c")  # and forward again
    assert store.collection("c").fingerprint == B  # type: ignore[union-attr]

    # gc keeps the previous version within the retention, drops it after.
    assert store.expire_versions(3600.0) == []
    assert store.retained("c") is not None
    assert store.expire_versions(0.0) == ["c"]
    assert store.retained("c") is None and store.collection(hidden("c", PREV)) is None
    removed, kept = store.gc()
    assert (removed, kept) == (4, 4)  # A's vectors went with its version
    with pytest.raises(VersionError, match="no previous version"):
        store.rollback("c")


def test_wrong_states_are_refused(store: Store) -> None:
    with pytest.raises(VersionError, match="no collection 'c'"):
        store.begin_migration("c", B, DIMS_B)
    _fill(store, 2)
    with pytest.raises(VersionError, match="already on model"):
        store.begin_migration("c", A, DIMS_A)
    with pytest.raises(VersionError, match="no migration in progress"):
        store.cutover("c")
    store.begin_migration("c", B, DIMS_B)
    with pytest.raises(VersionError, match="migration in progress"):
        store.rollback("c")
    # A migration to another model restarts from an empty target.
    _copy_all(store)
    assert store.begin_migration("c", "model-c@0003", DIMS_B) is False
    assert store.collection(hidden("c", NEXT)).documents == 0  # type: ignore[union-attr]
    assert store.abort_migration("c") is True and store.abort_migration("c") is False
    assert store.collection(hidden("c", NEXT)) is None
    # Dropping a collection drops its hidden versions too.
    store.begin_migration("c", B, DIMS_B)
    _copy_all(store)
    assert store.drop_collection("c") == 2
    assert store.collection(hidden("c", NEXT)) is None and store.migration("c") is None


def test_rollback_is_refused_once_the_previous_version_missed_a_write(store: Store) -> None:
    _fill(store, 3)
    store.begin_migration("c", B, DIMS_B)
    _copy_all(store)
    store.cutover("c")
    # A server that does not serve model A could not write a new document to A's version.
    store.upsert([_up("c", B, "new", "a new text", DIMS_B)], fingerprint=B, dimension=DIMS_B)
    store.mark_retained_behind("c")
    retained = store.retained("c")
    assert retained is not None and retained.behind and retained.fingerprint == A
    with pytest.raises(VersionError, match="missed writes made since the cutover"):
        store.rollback("c")
    assert store.collection("c").documents == 4  # type: ignore[union-attr]  # nothing lost
