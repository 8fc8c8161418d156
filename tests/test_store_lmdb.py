"""The LMDB store on its own: content hashes, documents, the change log, map growth, format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.store import Store, StoreError, Upsert, content_hash, open_store
from server.store import records as rec

FP = "model@0001"
DIMS = 16


def _vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(DIMS).astype(np.float32)


def _up(collection: str, doc_id: str, text: str, *, vector: bool = True, meta: dict | None = None) -> Upsert:  # type: ignore[type-arg]
    h = content_hash(FP, "", text)
    # Seeded by the content hash: str hash() is salted per process, and its value mod 1000 gave
    # two texts one vector now and then (a sample of 10 then held 9 distinct rows).
    return Upsert(
        collection, doc_id, h, text, meta or {}, _vec(int.from_bytes(h[:8], "little")) if vector else None
    )


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = open_store(tmp_path)
    yield s
    s.close()


def test_content_hash_separates_every_field() -> None:
    base = content_hash(FP, "query: ", "text")
    assert len(base) == 32
    assert base == content_hash(FP, "query: ", "text")
    assert base != content_hash("model@0002", "query: ", "text")
    assert base != content_hash(FP, "", "text")
    assert base != content_hash(FP, "query: ", "text ")
    # length prefixes: moving a character across the field boundary changes the hash
    assert content_hash(FP, "ab", "c") != content_hash(FP, "a", "bc")


def test_upsert_read_back_and_identical_reupsert_keeps_sequence(store: Store) -> None:
    docs = [_up("c", f"d{i}", f"text {i}", meta={"i": i}) for i in range(5)]
    results = store.upsert(docs, fingerprint=FP, dimension=DIMS)
    assert results == [(i + 1, True) for i in range(5)]
    got = store.documents("c", ["d3", "nope"])
    assert got[1] is None and got[0] is not None
    assert got[0].text == "text 3" and got[0].metadata == {"i": 3}
    np.testing.assert_array_equal(store.vectors([docs[3].content_hash])[0], docs[3].vector)
    # the same docs again, now as cache hits (no vector passed): nothing logged
    again = [Upsert(d.collection, d.doc_id, d.content_hash, d.text, d.metadata) for d in docs]
    assert store.upsert(again, fingerprint=FP, dimension=DIMS) == [(i + 1, False) for i in range(5)]
    meta = store.collection("c")
    assert meta is not None and meta.sequence == 5 and meta.documents == 5


def test_change_log_keeps_one_entry_per_document(store: Store) -> None:
    store.upsert([_up("c", "a", "one"), _up("c", "b", "two")], fingerprint=FP, dimension=DIMS)
    store.upsert([_up("c", "a", "one, changed")], fingerprint=FP, dimension=DIMS)
    deleted, seq = store.delete("c", ["b", "missing"])
    assert (deleted, seq) == (1, 4)
    changes = store.changes("c", 0, 100, 100)
    assert [(c.sequence, c.op, c.doc_id) for c in changes] == [
        (3, rec.OP_UPSERT, "a"),
        (4, rec.OP_DELETE, "b"),
    ]
    assert changes[0].doc is not None and changes[0].doc.text == "one, changed"
    assert store.changes("c", 3, 100, 100)[0].doc_id == "b"  # exclusive lower bound
    assert store.count_changes("c", 0, 3) == 1
    # re-adding a deleted id reuses its index key, so an index that missed the delete stays right
    key_before = changes[1].key
    store.upsert([_up("c", "b", "two again")], fingerprint=FP, dimension=DIMS)
    doc = store.documents("c", ["b"])[0]
    assert doc is not None and doc.key == key_before
    assert store.ids_for_keys("c", [key_before]) == ["b"]


def test_collections_are_separate_and_vectors_shared(store: Store) -> None:
    store.upsert([_up("x", "1", "shared"), _up("y", "1", "shared")], fingerprint=FP, dimension=DIMS)
    rows = store.collection_rows(FP)
    assert [(r.name, r.documents, r.stale) for r in rows] == [("x", 1, False), ("y", 1, False)]
    assert store.collection_rows("other@1")[0].stale
    keys, ids, vectors = store.matrix("x")
    assert ids == ["1"] and vectors.shape == (1, DIMS) and keys.dtype == np.int64


def test_stale_collection_rejects_writes_of_another_model(store: Store) -> None:
    from server.store import StaleCollection

    store.upsert([_up("c", "a", "one")], fingerprint=FP, dimension=DIMS)
    other = Upsert("c", "b", content_hash("new@2", "", "two"), "two", {}, _vec(2))
    with pytest.raises(StaleCollection, match="reembed"):
        store.upsert([other], fingerprint="new@2", dimension=DIMS)
    assert store.documents("c", ["b"]) == [None]


def test_missing_vector_aborts_the_whole_batch(store: Store) -> None:
    from server.store import VectorsMissing

    with pytest.raises(VectorsMissing):
        store.upsert(
            [_up("c", "a", "fine"), _up("c", "b", "never stored", vector=False)],
            fingerprint=FP,
            dimension=DIMS,
        )
    assert store.documents("c", ["a", "b"]) == [None, None]


def test_map_grows_when_full_and_nothing_is_lost(tmp_path: Path) -> None:
    store = open_store(tmp_path, map_size=64 * 1024)
    try:
        start = store.map_size()
        for batch in range(20):
            docs = [_up("c", f"{batch}-{i}", f"doc {batch} {i} " + "x" * 200) for i in range(100)]
            store.upsert(docs, fingerprint=FP, dimension=DIMS)
        assert store.map_size() > start
        meta = store.collection("c")
        assert meta is not None and meta.documents == 2000
        assert all(
            d is not None for d in store.documents("c", [f"{b}-{i}" for b in range(20) for i in range(100)])
        )
    finally:
        store.close()


def test_second_open_is_refused_and_format_is_checked(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    with pytest.raises(StoreError, match="in use"):
        open_store(tmp_path)
    with store.env.begin(write=True) as txn:
        txn.put(b"format", b"999", db=store._db["meta"])
    store.close()
    with pytest.raises(StoreError, match="format 999"):
        open_store(tmp_path)


def _vector_bytes(store: Store) -> tuple[int, int]:
    """(value bytes, LMDB pages) of the store's vectors database, as LMDB holds them."""
    db = store._db["vectors"]
    with store.env.begin() as txn:
        values = sum(len(v) for v in txn.cursor(db=db).iternext(keys=False, values=True))
        stat = txn.stat(db)
    return values, stat["leaf_pages"] + stat["branch_pages"] + stat["overflow_pages"]


def test_float16_storage_halves_bytes(tmp_path: Path) -> None:
    # The model's width (384), so the page count reflects real records, not headers.
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((300, 384)).astype(np.float32)
    measured = {}
    for float16 in (False, True):
        store = Store(tmp_path / f"s{int(float16)}", float16=float16)
        try:
            ups = [
                Upsert("c", str(i), content_hash(FP, "", f"doc {i}"), f"doc {i}", {}, v)
                for i, v in enumerate(vectors)
            ]
            store.upsert(ups, fingerprint=FP, dimension=384)
            back = store.vectors([u.content_hash for u in ups])
            assert back.dtype == np.float32
            np.testing.assert_allclose(back, vectors, atol=0 if not float16 else 4e-3)
            measured[float16] = _vector_bytes(store)
        finally:
            store.close()
    (f32_values, f32_pages), (f16_values, f16_pages) = measured[False], measured[True]
    assert f32_values == 300 * (1 + 4 * 384) and f16_values == 300 * (1 + 2 * 384)  # tag + payload
    assert f16_pages <= 0.55 * f32_pages, (f16_pages, f32_pages)  # the pages LMDB wrote, halved too


def test_sample_vectors_and_gc(store: Store) -> None:
    store.upsert([_up("a", str(i), f"a{i}") for i in range(50)], fingerprint=FP, dimension=DIMS)
    store.upsert([_up("b", str(i), f"b{i}") for i in range(30)], fingerprint="old@1", dimension=DIMS)
    assert store.sample_vectors(1000).shape == (80, DIMS)
    assert store.sample_vectors(1000, fingerprint=FP).shape == (50, DIMS)
    store.serving_fingerprint = FP  # as the server sets it: other models' vectors are left out
    assert store.sample_vectors(1000).shape == (50, DIMS)
    assert store.sample_vectors(1000, collection="b").shape == (0, 0)
    sample = store.sample_vectors(10, collection="a", seed=1)
    assert sample.shape == (10, DIMS) and len({row.tobytes() for row in sample}) == 10
    store.upsert([_up("a", "0", "a0 changed")], fingerprint=FP, dimension=DIMS)
    store.delete("a", ["1"])
    assert store.gc() == (2, 79)
    assert store.gc() == (0, 79)


def test_sample_documents_pairs_each_sampled_vector_with_its_text(store: Store) -> None:
    ups = [_up("a", str(i), f"text number {i}") for i in range(40)]
    store.upsert(ups, fingerprint=FP, dimension=DIMS)
    by_text = {u.text: u.vector for u in ups}
    vectors, texts = store.sample_documents(15, seed=3)
    assert vectors.shape == (15, DIMS) and len(texts) == 15
    for vector, text in zip(vectors, texts, strict=True):
        np.testing.assert_array_equal(vector, by_text[str(text)])
    np.testing.assert_array_equal(vectors, store.sample_vectors(15, seed=3))  # the same sample
    assert store.sample_documents(5, collection="missing")[1] == []


def test_long_text_is_compressed_and_read_back_exactly(store: Store) -> None:
    text = "Mitochondria are the powerhouse of the cell; ünïcode ✓. " * 40
    store.upsert([_up("c", "long", text, meta={"title": "t"})], fingerprint=FP, dimension=DIMS)
    doc = store.documents("c", ["long"])[0]
    assert doc is not None and doc.text == text and doc.metadata == {"title": "t"}
    raw = rec.pack_doc(doc)
    assert len(raw) < len(text.encode()) // 4  # repetitive text: zlib pays off


def test_a_collection_has_an_incarnation_that_only_it_keeps(tmp_path: Path) -> None:
    store = open_store(tmp_path / "a")
    try:
        store.upsert([_up("c", "1", "one")], fingerprint=FP, dimension=DIMS)
        first = store.collection("c")
        assert first is not None and len(first.incarnation) == 32
        store.upsert([_up("c", "2", "two")], fingerprint=FP, dimension=DIMS)
        store.delete("c", ["1", "2"])
        assert store.collection("c").incarnation == first.incarnation  # type: ignore[union-attr]
        assert [r.incarnation for r in store.collection_rows(FP)] == [first.incarnation]
        # a store written before incarnations existed: its collections get one when opened
        meta = rec.CollectionMeta(FP, DIMS, sequence=7, documents=1, next_key=2)
        store._write(lambda txn: txn.put(b"old", meta.pack(), db=store._db["collections"]))
        assert store.collection("old").incarnation == ""  # type: ignore[union-attr]
    finally:
        store.close()
    store = open_store(tmp_path / "a")
    try:
        given = store.collection("old")
        assert given is not None and len(given.incarnation) == 32 and given.sequence == 7
        assert store.collection("c").incarnation == first.incarnation  # type: ignore[union-attr]
    finally:
        store.close()
    store = open_store(tmp_path / "a")
    try:
        assert store.collection("old").incarnation == given.incarnation  # type: ignore[union-attr]
    finally:
        store.close()
    # the same name created in another store (a wiped data directory) is another incarnation
    other = open_store(tmp_path / "b")
    try:
        other.upsert([_up("c", "1", "one")], fingerprint=FP, dimension=DIMS)
        assert other.collection("c").incarnation != first.incarnation  # type: ignore[union-attr]
    finally:
        other.close()
