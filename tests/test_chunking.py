"""The chunker (real tokenizer) and how the store and its index keep chunked documents (real
LMDB, real usearch)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.chunking import Chunker, chunker_for
from server.store import ChunkRef, Indexes, Store, Upsert, content_hash, open_store
from tests._collections import scifact_docs

FP = "test-model@1"


@pytest.fixture(scope="module")
def chunker(spec: Any) -> Chunker:
    return chunker_for(spec, overlap=32)


def _long_text(start: int, count: int = 8) -> list[str]:
    return [text for _, text, _ in scifact_docs(count, skip=start)]


def test_a_text_the_model_reads_whole_is_one_chunk(chunker: Chunker, spec: Any) -> None:
    assert chunker.budget == spec.max_tokens - 2 == 254  # [CLS] and [SEP]
    text = _long_text(0, 1)[0]
    assert [(s.start, s.stop) for s in chunker.split(text)] == [(0, len(text))]
    assert [(s.start, s.stop) for s in chunker.split("a")] == [(0, 1)]


def test_windows_fit_the_model_cut_at_word_starts_and_cover_the_text(chunker: Chunker) -> None:
    text = "\n\n".join(_long_text(0))
    spans = chunker.split(text)
    assert len(spans) > 5
    encoding = chunker.tokenizer.encode(text, add_special_tokens=False)
    offsets, words = encoding.offsets, encoding.word_ids  # each access builds a new list: once
    word_starts = {0} | {offsets[i][0] for i in range(1, len(offsets)) if words[i] != words[i - 1]}
    token_ends = {end for _, end in offsets}
    for span in spans:
        assert span.start in word_starts  # never inside a word or a word piece
        assert span.stop == len(text) or span.stop in token_ends
        piece = text[span.start : span.stop]
        tokens = len(chunker.tokenizer.encode(piece, add_special_tokens=False).ids)
        assert tokens <= chunker.window  # a chunk never holds more than the model reads
    # consecutive chunks overlap or touch: no token is left out
    for before, after in itertools.pairwise(spans):
        assert after.start <= before.stop and after.stop > before.stop
    assert spans[0].start == 0 and spans[-1].stop == len(text.rstrip())


def test_an_edited_paragraph_changes_at_most_two_chunks(chunker: Chunker) -> None:
    changed_total = 0
    for start in range(0, 40, 8):
        paragraphs = _long_text(start)
        before = "\n\n".join(paragraphs)
        edited = list(paragraphs)
        edited[3] = edited[3].replace(". ", ". This sentence was added in an edit of the paragraph. ", 1)
        after = "\n\n".join(edited)
        old = {before[s.start : s.stop] for s in chunker.split(before)}
        new = [after[s.start : s.stop] for s in chunker.split(after)]
        changed = sum(piece not in old for piece in new)
        assert 1 <= changed <= 3
        changed_total += changed
    assert changed_total <= 2 * 5  # on average at most two per document
    # fixed windows would have moved every chunk after the edit


def test_a_text_without_sentences_or_lines_is_cut_at_word_starts(chunker: Chunker) -> None:
    words = [f"zq{i}x" for i in range(1500)]  # several word pieces each, no anchor anywhere
    text = " ".join(words)
    spans = chunker.split(text)
    assert len(spans) > 6 and spans[0].start == 0 and spans[-1].stop == len(text)
    for span in spans:
        assert span.tokens <= chunker.window
        assert span.start == 0 or text[span.start - 1] == " "  # a whole word begins it
        assert span.stop == len(text) or text[span.stop] == " "  # and one ends it


_PIECES = [
    "word",
    "Ünïcödé",
    "北京大学",
    "don't",
    "e.g.",
    "12,5",
    "--",
    "\n",
    "\n\n",
    " ",
    "  ",
    "\t",
    "x" * 120,
]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_long_texts_are_tokenized_in_slices_as_one_text(chunker: Chunker, seed: int) -> None:
    """Chunker._tokenize cuts a long text into slices at whitespace (bounded tokenizer memory):
    the tokens, their offsets and word starts must be the whole text's."""
    rng = random.Random(seed)
    text = "".join(
        p if rng.random() < 0.5 else p + " " for p in rng.choices(_PIECES, k=rng.randint(2500, 6000))
    )
    ids, offsets, word_start = chunker._tokenize(text)
    (whole,) = chunker.tokenizer.encode_batch([text], add_special_tokens=False)
    assert len(text) > 8192  # several slices
    assert ids.tolist() == whole.ids
    assert [tuple(o) for o in offsets.tolist()] == [tuple(o) for o in whole.offsets]
    words = [-1 if w is None else w for w in whole.word_ids]
    assert word_start[1:].tolist() == [a != b for a, b in zip(words[1:], words[:-1], strict=True)]


def test_overlap_must_be_less_than_half_a_window(spec: Any) -> None:
    with pytest.raises(ValueError, match="half"):
        chunker_for(spec, window=64, overlap=32)


def _vec(seed: int, dims: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dims).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(tmp_path / "data")
    yield opened
    opened.close()


def _chunked(doc_id: str, texts: list[str], seeds: list[int]) -> Upsert:
    hashes = [content_hash(FP, "", t) for t in texts]
    spans, at = [], 0
    for t in texts:
        spans.append((at, at + len(t)))
        at += len(t) + 1
    refs = tuple(ChunkRef(h, a, b) for h, (a, b) in zip(hashes, spans, strict=True))
    vectors = {h: _vec(s) for h, s in zip(hashes, seeds, strict=True)}
    return Upsert("c", doc_id, hashes[0], " ".join(texts), {}, chunks=refs, chunk_vectors=vectors)


def test_store_and_index_keep_every_chunk_and_delete_removes_them_all(store: Store, tmp_path: Path) -> None:
    short = Upsert("c", "short", content_hash(FP, "", "s"), "s", {}, _vec(100))
    store.upsert([short, _chunked("long", ["aa", "bb", "cc"], [1, 2, 3])], fingerprint=FP, dimension=8)
    (doc,) = store.documents("c", ["long"])
    assert doc is not None and len(doc.chunks) == 3 and doc.span(1) == (3, 5)
    assert doc.text is not None and doc.text[3:5] == "bb"
    _keys, ids, ordinals, _vectors = store.chunk_matrix("c")
    assert sorted(zip(ids, ordinals.tolist(), strict=True)) == [
        ("long", 0), ("long", 1), ("long", 2), ("short", 0)
    ]  # fmt: skip
    indexes = Indexes(store, tmp_path / "idx", fingerprint=FP, ndim=8, metric="ip", dtype="f32")
    index = indexes.get("c")
    assert len(index) == 2 and len(index.index) == 4
    found, scores, best = index.search_chunks(_vec(2), 2)  # the long document's second chunk
    assert found.tolist()[0] == doc.key and best.tolist()[0] == 1 and scores[0] > 0.99
    assert len(found) == 2  # documents, not chunks: the short one comes second
    # a shorter version: its dropped chunks leave the index; a restart rebuilds the same
    store.upsert([_chunked("long", ["aa", "dd"], [1, 4])], fingerprint=FP, dimension=8)
    index = indexes.get("c")
    assert len(index.index) == 3 and index.groups.chunks == 3
    store.delete("c", ["long"])
    index = indexes.get("c")
    assert len(index) == 1 and len(index.index) == 1
    assert index.search(_vec(4), 5)[0].tolist() == [store.documents("c", ["short"])[0].key]  # type: ignore[union-attr]
    assert store.gc() == (4, 1)  # every chunk vector of the deleted document goes


def test_a_format_1_store_opens_and_is_marked_format_2(tmp_path: Path) -> None:
    opened = open_store(tmp_path / "old")
    opened.upsert(
        [Upsert("c", "d", content_hash(FP, "", "t"), "t", {}, _vec(1))], fingerprint=FP, dimension=8
    )
    with opened.env.begin(write=True) as txn:
        txn.put(b"format", b"1", db=opened._db["meta"])
    opened.close()
    again = open_store(tmp_path / "old")
    try:
        with again.env.begin() as txn:
            assert bytes(txn.get(b"format", db=again._db["meta"])) == b"2"  # a format-1 reader refuses it now
        (doc,) = again.documents("c", ["d"])
        assert doc is not None and doc.chunks == () and doc.hashes == [content_hash(FP, "", "t")]
    finally:
        again.close()
