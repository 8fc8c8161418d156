"""usearch indexes derived from the store: build, catch up from the log, save atomically, reload."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from server.store import Indexes, Upsert, content_hash, open_store

FP = "model@0001"
DIMS = 32


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIMS)).astype(np.float32)
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def _docs(vectors: np.ndarray, start: int = 0) -> list[Upsert]:
    return [
        Upsert("c", f"d{start + i}", content_hash(FP, "", f"t{start + i}"), f"t{start + i}", {}, v)
        for i, v in enumerate(vectors)
    ]


def _indexes(store, tmp_path: Path) -> Indexes:  # type: ignore[no-untyped-def]
    return Indexes(store, tmp_path / "idx", fingerprint=FP, ndim=DIMS, metric="ip", dtype="f16")


def test_index_follows_upserts_and_deletes_and_reloads(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = _unit(rng, 200)
    store = open_store(tmp_path)
    try:
        store.upsert(_docs(vectors), fingerprint=FP, dimension=DIMS)
        indexes = _indexes(store, tmp_path)
        index = indexes.get("c")
        assert len(index.index) == 200 and index.sequence == 200
        keys, scores = index.search(vectors[7], 1)
        assert store.ids_for_keys("c", list(keys)) == ["d7"] and scores[0] > 0.99
        # an update moves d7 (remove + add under the same key), a delete drops d8
        moved = _unit(rng, 1)[0]
        store.upsert(
            [Upsert("c", "d7", content_hash(FP, "", "new"), "new", {}, moved)],
            fingerprint=FP,
            dimension=DIMS,
        )
        store.delete("c", ["d8"])
        assert index.catch_up(store) == 2
        assert store.ids_for_keys("c", list(index.search(moved, 1)[0])) == ["d7"]
        assert len(index.index) == 199
        assert indexes.save_all() == 1 and indexes.save_all() == 0  # unchanged: not written again
        assert not list((tmp_path / "idx").glob("*.tmp"))
        # more changes after the save: a fresh process loads the file and replays only those
        store.upsert(_docs(_unit(rng, 5), start=200), fingerprint=FP, dimension=DIMS)
        reloaded = _indexes(store, tmp_path).get("c")
        assert reloaded.sequence == store.collection("c").sequence  # type: ignore[union-attr]
        assert len(reloaded.index) == 204
        assert store.ids_for_keys("c", list(reloaded.search(vectors[3], 1)[0])) == ["d3"]
    finally:
        store.close()


def test_missing_or_foreign_index_file_is_rebuilt(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = _unit(rng, 50)
    store = open_store(tmp_path)
    try:
        store.upsert(_docs(vectors), fingerprint=FP, dimension=DIMS)
        indexes = _indexes(store, tmp_path)
        indexes.get("c")
        indexes.save_all()
        path = indexes.get("c").path
        path.unlink()
        rebuilt = _indexes(store, tmp_path)
        assert len(rebuilt.get("c").index) == 50
        assert rebuilt.save_all() == 1 and rebuilt.get("c").path.is_file()
        # a sidecar written for another model is not trusted
        other = Indexes(store, tmp_path / "idx", fingerprint="other@2", ndim=DIMS, metric="ip", dtype="f16")
        index = other.get("c")
        assert index.load(store) is False
        assert len(index.index) == 50
    finally:
        store.close()


def test_documents_sharing_a_vector_share_one_point_and_all_come_back(tmp_path: Path) -> None:
    # Identical texts have one content hash and one vector: the graph holds it once, and a
    # search expands it to every document carrying it (k documents when k exist, best first).
    centres = _unit(np.random.default_rng(0), 2)
    store = open_store(tmp_path)
    try:
        docs = [
            Upsert("c", f"d{i}", content_hash(FP, "", f"t{i % 2}"), f"t{i % 2}", {}, centres[i % 2])
            for i in range(400)
        ]
        store.upsert(docs, fingerprint=FP, dimension=DIMS)
        index = _indexes(store, tmp_path).get("c")
        assert len(index.index) == 2 and len(index) == 400
        for c, centre in enumerate(centres):
            keys, scores = index.search(centre, 400)
            assert len(set(keys.tolist())) == 400
            assert np.all(np.diff(scores) <= 1e-6)  # still best first
            ids = store.ids_for_keys("c", keys[:200].tolist())
            assert {int(i[1:]) % 2 for i in ids if i} == {c}  # the query's own documents lead
            assert np.allclose(scores[:200], 1.0, atol=1e-2)
            few, _ = index.search(centre, 5)
            assert store.ids_for_keys("c", few.tolist()) == [
                f"d{c + 2 * j}" for j in range(5)
            ]  # creation order
    finally:
        store.close()


def test_search_returns_k_hits_where_the_graph_walk_comes_back_short(tmp_path: Path) -> None:
    # Different texts can still embed to one vector (the same tokens: case for an uncased model,
    # a shared first 256 tokens). Such points have distinct content hashes, so each is its own
    # node; HNSW links these clusters poorly and its walk reaches three quarters of them.
    # Asking for every document must still get every one.
    centres = _unit(np.random.default_rng(0), 2)
    vectors = np.repeat(centres, 200, axis=0)
    store = open_store(tmp_path)
    try:
        store.upsert(_docs(vectors), fingerprint=FP, dimension=DIMS)
        index = _indexes(store, tmp_path).get("c")
        raw = [len(index.index.search(c, 400).keys) for c in centres]
        assert min(raw) < 400  # the graph walk alone is short here
        for centre in centres:
            keys, scores = index.search(centre, 400)
            assert len(set(keys.tolist())) == 400
            assert np.all(np.diff(scores) <= 1e-6)  # still best first
            assert np.allclose(scores[:200], 1.0, atol=1e-2)  # the query's own cluster leads
    finally:
        store.close()


def test_many_updates_rebuild_the_graph_from_the_store(tmp_path: Path) -> None:
    # An update is remove + add, and usearch's patched graph loses recall (see the constants in
    # server/store/index.py): past a share of removals the index is rebuilt from the store.
    rng = np.random.default_rng(3)
    store = open_store(tmp_path)
    try:
        store.upsert(_docs(_unit(rng, 600)), fingerprint=FP, dimension=DIMS)
        index = _indexes(store, tmp_path).get("c")

        def update(first: int, count: int) -> np.ndarray:
            moved = _unit(rng, count)
            ups = [
                Upsert("c", f"d{first + i}", content_hash(FP, "", f"moved {first + i}"), "moved", {}, v)
                for i, v in enumerate(moved)
            ]
            store.upsert(ups, fingerprint=FP, dimension=DIMS)
            index.catch_up(store)
            return moved

        update(0, 100)  # below the threshold: patched in place
        assert (index.rebuilds, index.removed_since_build) == (0, 100)
        moved = update(100, 200)  # 300 removals >= 25% of 600 (and >= 256): a fresh graph
        assert (index.rebuilds, index.removed_since_build) == (1, 0)
        assert len(index.index) == 600 and index.sequence == store.collection("c").sequence  # type: ignore[union-attr]
        for i in (0, 57, 199):
            assert store.ids_for_keys("c", list(index.search(moved[i], 1)[0])) == [f"d{100 + i}"]
    finally:
        store.close()


def test_shared_vectors_follow_updates_deletes_restarts_and_a_replaced_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    texts = {f"t{j}": v for j, v in enumerate(_unit(rng, 3))} | {
        f"u{j}": v for j, v in enumerate(_unit(rng, 10))
    }

    def up(doc_id: str, text: str) -> Upsert:
        return Upsert("c", doc_id, content_hash(FP, "", text), text, {}, texts[text])

    def found(index, store, text: str, k: int = 50) -> list[str]:  # type: ignore[no-untyped-def]
        keys, _ = index.search(texts[text], k)
        return [i for i in store.ids_for_keys("c", keys.tolist()) if i]

    store = open_store(tmp_path / "a")
    try:
        store.upsert(
            [up(f"d{i}", f"t{i % 3}") for i in range(30)] + [up(f"u{j}", f"u{j}") for j in range(10)],
            fingerprint=FP,
            dimension=DIMS,
        )
        indexes = _indexes(store, tmp_path)
        index = indexes.get("c")
        assert (len(index.index), len(index)) == (13, 40)
        # d0 moves to u0's text; every t1 document goes: its vector leaves the graph
        store.upsert([up("d0", "u0")], fingerprint=FP, dimension=DIMS)
        store.delete("c", [f"d{i}" for i in range(1, 30, 3)])
        index.catch_up(store)
        assert (len(index.index), len(index)) == (12, 30)
        assert found(index, store, "u0", 2) == ["d0", "u0"]  # in creation order
        assert not {f"d{i}" for i in range(1, 30, 3)} & set(found(index, store, "t1"))
        assert found(index, store, "t0", 9) == [f"d{i}" for i in range(3, 30, 3)]
        assert indexes.save_all() == 1
        # changes the saved index never saw (the server died before its next save)
        store.upsert([up("d3", "t2"), up("n1", "t1")], fingerprint=FP, dimension=DIMS)
        store.delete("c", ["u5"])
    finally:
        store.close()
    store = open_store(tmp_path / "a")
    try:
        index = _indexes(store, tmp_path).get("c")
        assert (len(index.index), len(index)) == (12, 30)
        assert found(index, store, "t1", 1) == ["n1"] and "u5" not in found(index, store, "u5")
        assert "d3" in found(index, store, "t2", 11) and "d3" not in found(index, store, "t0", 9)
        _indexes(store, tmp_path).save_all()
    finally:
        store.close()
    # the store is replaced by another one (a wiped data directory): the saved index is not trusted
    other = open_store(tmp_path / "b")
    try:
        other.upsert([up("x", "t0")], fingerprint=FP, dimension=DIMS)
        index = _indexes(other, tmp_path).get("c")
        assert (len(index.index), len(index)) == (1, 1)
        assert found(index, other, "t0") == ["x"]
    finally:
        other.close()
