"""The lexical (BM25) index as a cache of a real LMDB store, without a server or a model:
built from the store, removals masked at once through the change log, additions after a
background rebuild, saved and loaded, rebuilt when its files are damaged or gone."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from server import fusion
from server.store import Store, Upsert, content_hash, open_store
from server.store.lexical import LexicalIndexes

MODEL = "test-model"
DIMS = 4
DEADLINE_S = 30.0


def _upsert(store: Store, collection: str, doc_id: str, text: str) -> int:
    vector = np.random.default_rng(len(text)).standard_normal(DIMS).astype(np.float32)
    doc = Upsert(collection, doc_id, content_hash(MODEL, "", text), text, {}, vector)
    [(sequence, _)] = store.upsert([doc], fingerprint=MODEL, dimension=DIMS)
    return sequence


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    """Wait on ``condition`` with a deadline (the rebuild thread's work, not a fixed sleep)."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {DEADLINE_S} s: {what}"
        time.sleep(0.02)


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(tmp_path / "data")
    yield opened
    opened.close()


DOCS = {
    "a": "Aspirin lowers the risk of myocardial infarction in older adults.",
    "b": "Statins reduce cholesterol and cardiovascular events.",
    "c": "Vitamin D supplementation and bone fractures in the elderly.",
    "d": "Aspirin and statins combined: a randomized trial.",
}


def _ids(found: list[tuple[str, float]]) -> list[str]:
    return [doc_id for doc_id, _ in found]


def test_built_from_the_store_kept_in_step_and_reloaded(store: Store, tmp_path: Path) -> None:
    for doc_id, text in DOCS.items():
        _upsert(store, "c1", doc_id, text)
    lexical = LexicalIndexes(store, tmp_path / "lexical")
    lexical.start()
    try:
        found, sequence = lexical.search("c1", "aspirin", 10)
        assert set(_ids(found)) == {"a", "d"} and sequence == 4
        assert all(score > 0 for _, score in found)
        assert _ids(lexical.search("c1", "cholesterols", 10)[0]) == ["b"]  # stemmed
        assert lexical.search("c1", "the and of", 10)[0] == []  # stop words only: no match

        # a delete is masked at once (the next search reads the change log), and a rebuild then
        # drops its row (BM25's statistics no longer count it)
        loaded = lexical.get("c1")
        assert loaded is not None
        c1_index, builds = loaded, loaded.rebuilds
        store.delete("c1", ["a"])
        assert _ids(lexical.search("c1", "aspirin", 10)[0]) == ["d"]
        _wait_for(lambda: c1_index.rebuilds > builds and c1_index.changed == 0, "the rebuild after a delete")
        assert "a" not in c1_index.snapshot.ids and _ids(lexical.search("c1", "aspirin", 10)[0]) == ["d"]

        # an update: never found by its old words; by its new ones after the rebuild
        updated = _upsert(store, "c1", "d", "Metformin and glucose control in type 2 diabetes.")
        lexical.touch("c1")
        assert lexical.search("c1", "aspirin", 10)[0] == []  # at once

        def rebuilt() -> bool:
            return lexical.search("c1", "metformin", 10)[1] >= updated

        _wait_for(rebuilt, "the rebuild with the updated text")
        assert _ids(lexical.search("c1", "metformin", 10)[0]) == ["d"]
        assert lexical.search("c1", "aspirin", 10)[0] == []
        before = {q: lexical.search("c1", q, 10)[0] for q in ("metformin", "statins", "vitamin bone")}
    finally:
        lexical.close()

    # a new process: the saved index is loaded (no rebuild) and answers the same
    again = LexicalIndexes(store, tmp_path / "lexical")
    try:
        index = again.get("c1")
        assert index is not None and index.rebuilds == 0 and index.generation >= 1
        assert {q: again.search("c1", q, 10)[0] for q in before} == before
    finally:
        again.close()

    # damaged files: rebuilt from the store, same answers
    for path in (tmp_path / "lexical").rglob("*.npy"):
        path.write_bytes(b"garbage")
    third = LexicalIndexes(store, tmp_path / "lexical")
    try:
        index = third.get("c1")
        assert index is not None and index.rebuilds == 1
        assert {q: third.search("c1", q, 10)[0] for q in before} == before
    finally:
        third.close()


def test_changes_made_while_it_was_down_are_applied_at_load(store: Store, tmp_path: Path) -> None:
    for doc_id, text in DOCS.items():
        _upsert(store, "c2", doc_id, text)
    first = LexicalIndexes(store, tmp_path / "lexical")
    assert first.get("c2") is not None
    first.close()
    store.delete("c2", ["b"])  # a removal made while it was down: rebuilt at load
    second = LexicalIndexes(store, tmp_path / "lexical")
    try:
        index = second.get("c2")
        assert index is not None and index.rebuilds == 1 and "b" not in index.snapshot.ids
        assert second.search("c2", "statins", 10)[0][0][0] == "d"
        assert "b" not in _ids(second.search("c2", "statins cholesterol", 10)[0])
    finally:
        second.close()
    added = _upsert(store, "c2", "e", "Zinc and the common cold.")  # an addition: rebuilt at load
    third = LexicalIndexes(store, tmp_path / "lexical")
    try:
        found, sequence = third.search("c2", "zinc", 10)
        assert _ids(found) == ["e"] and sequence == added
        assert third.get("c2").rebuilds == 1  # type: ignore[union-attr]
        # with no rebuild thread running, an addition is not searchable and the answer says so
        later = _upsert(store, "c2", "f", "Zinc lozenges in children.")
        found, sequence = third.search("c2", "zinc lozenges", 10)
        assert _ids(found) == ["e"] and sequence == added < later
    finally:
        third.close()


def test_a_document_without_text_or_collection_has_no_row(store: Store, tmp_path: Path) -> None:
    vector = np.ones(DIMS, np.float32)
    store.upsert(
        [Upsert("c3", "silent", content_hash(MODEL, "", "secret words"), None, {}, vector)],
        fingerprint=MODEL,
        dimension=DIMS,
    )
    lexical = LexicalIndexes(store, tmp_path / "lexical")
    try:
        assert lexical.search("c3", "secret", 10) == ([], 1)
        assert lexical.search("no-such-collection", "secret", 10) == ([], 0)
    finally:
        lexical.close()


def test_rrf_and_weighted_fusion_by_hand() -> None:
    dense = [("a", 0.9), ("b", 0.8), ("c", 0.5)]
    lexical = [("c", 12.0), ("d", 6.0), ("a", 3.0)]
    fused = dict(fusion.rrf([dense, lexical], k=60))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 63)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["b"] == pytest.approx(1 / 62) and fused["d"] == pytest.approx(1 / 62)
    assert [i for i, _ in fusion.rrf([dense, lexical], k=60)] == ["a", "c", "b", "d"]  # ties: first seen
    weighted = dict(fusion.weighted(dense, lexical, alpha=0.25))
    # dense' a=1, b=0.75, c=0; lexical' c=1, d=1/3, a=0
    assert weighted == pytest.approx({"a": 0.25, "b": 0.1875, "c": 0.75, "d": 0.25})
    assert fusion.min_max([("x", 2.0), ("y", 2.0)]) == {"x": 1.0, "y": 1.0}
