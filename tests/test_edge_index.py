"""The local usearch index with real embeddings: dtypes, upsert/delete, atomic save, reopen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_client.index import LocalIndex
from embedcore import EdgeBundle

SAMPLE = Path(__file__).resolve().parent.parent / "server" / "samples" / "sample_corpus.jsonl"


@pytest.fixture(scope="module")
def corpus(edge_bundle: EdgeBundle) -> tuple[list[str], list[str], np.ndarray]:
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    ids = [r["_id"] for r in rows]
    texts = [f"{r['title']} {r['text']}" for r in rows]
    return ids, texts, edge_bundle.embed(texts, 128, kind="document")


@pytest.mark.parametrize("dtype", ["f16", "i8", "b1"])
def test_dtypes_find_the_right_documents_and_survive_reopen(
    dtype: str, corpus: tuple[list[str], list[str], np.ndarray], edge_bundle: EdgeBundle, tmp_path: Path
) -> None:
    ids, texts, vectors = corpus
    index = LocalIndex(tmp_path, dims=128, dtype=dtype)
    index.upsert(ids, vectors, texts, [{"n": i} for i in range(len(ids))], source="sync")
    index.save()
    index.close()
    assert not list(tmp_path.glob(".vectors.*"))  # no temp files left behind
    reopened = LocalIndex(tmp_path, dims=128, dtype=dtype)
    assert len(reopened) == len(ids)
    queries = {
        "how do astronomers find planets around other stars": "astro-3",
        "why is my wifi slow at home": "tech-7",
        "keeping basil fresh": "cook-5",
    }
    for query, expected in queries.items():
        hits = reopened.search(edge_bundle.embed([query], 128)[0], 3)
        assert hits[0].id == expected, (dtype, query, hits)
        assert hits[0].score > hits[1].score and -1.0 <= hits[0].score <= 1.0001
    self_hit = reopened.search(vectors[0], 1)[0]
    assert self_hit.id == ids[0] and self_hit.score == pytest.approx(1.0, abs=0.02)
    assert self_hit.metadata == {"n": 0} and self_hit.text == texts[0]
    reopened.close()


def synced_index(corpus: tuple[list[str], list[str], np.ndarray], directory: Path) -> LocalIndex:
    """A 128-dim local index holding the whole corpus, as a sync leaves it."""
    ids, texts, vectors = corpus
    index = LocalIndex(directory, dims=128)
    index.upsert(ids, vectors, texts, [{}] * len(ids), source="sync")
    return index


def test_upsert_replaces_and_delete_removes(
    corpus: tuple[list[str], list[str], np.ndarray], tmp_path: Path
) -> None:
    ids, _texts, vectors = corpus
    index = synced_index(corpus, tmp_path)
    # astro-1 now carries cook-1's vector: searching with it finds both, no duplicate keys.
    index.upsert(["astro-1"], vectors[ids.index("cook-1")][None], ["moved"], [{}], source="sync")
    assert len(index) == len(ids)
    top = {h.id for h in index.search(vectors[ids.index("cook-1")], 2)}
    assert top == {"astro-1", "cook-1"}
    assert index.delete(["cook-1", "not-there"]) == 1
    assert len(index) == len(ids) - 1
    assert "cook-1" not in {h.id for h in index.search(vectors[ids.index("cook-1")], 5)}


def test_other_layout_on_disk_starts_afresh(
    corpus: tuple[list[str], list[str], np.ndarray], tmp_path: Path
) -> None:
    index = synced_index(corpus, tmp_path)
    index.set_state("sequence", "56")
    index.save()
    index.close()
    other = LocalIndex(tmp_path, dims=64)
    assert len(other) == 0 and other.get_state("sequence") == ""


def test_add_embeds_local_files_by_paragraph_on_the_device(edge_bundle: EdgeBundle, tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    from edge_client import EdgeClient

    home = tmp_path / "home"
    shutil.copytree(edge_bundle.directory, home / "bundle")  # as `init` installs it; no server needed
    notes = tmp_path / "notes.txt"
    notes.write_text(
        "Grocery list: oat milk, lentils, and spinach.\n\n"
        "The boiler makes a knocking noise when the heating starts in the morning.\n\n\n"
        "  Book the dentist for a check-up next month.  \n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "edge_client", "add", str(notes), "--home", str(home), "--collection", "mine"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "added 3 paragraphs" in result.stdout
    with EdgeClient(home) as client:
        found = client.search("why is my heating system banging", collection="mine", k=3, mode="local")
    assert found.source == "local" and not found.degraded
    top = found.results[0]
    assert top.id == f"{notes.resolve()}#1" and top.metadata == {"path": str(notes.resolve()), "paragraph": 1}
    assert top.text.startswith("The boiler makes a knocking noise")


@pytest.fixture(scope="module")
def scifact(edge_bundle: EdgeBundle) -> tuple[list[str], np.ndarray]:
    """140 SciFact texts and their edge vectors (128 dims), computed once."""
    from tests._collections import scifact_docs

    texts = [text for _, text, _ in scifact_docs(140, skip=260)]
    return texts, edge_bundle.embed(texts, 128, kind="document")


def _content(text: str) -> str:
    return "text:" + text


def test_documents_sharing_content_share_one_vector_and_unique_ones_stay_findable(
    scifact: tuple[list[str], np.ndarray], tmp_path: Path
) -> None:
    # 4,000 documents over 40 texts + 100 unique: one point per text, or 75 of the 100 unique
    # documents no longer find themselves (14 at 1,500 documents; 172 of 200 at 6,000).
    texts, vectors = scifact
    copies = 4000
    rows = [i % 40 for i in range(copies)] + list(range(40, 140))
    ids = [f"dup-{n}" for n in range(copies)] + [f"uniq-{j}" for j in range(40, 140)]
    index = LocalIndex(tmp_path, dims=128)
    index.upsert(
        ids,
        vectors[rows],
        [texts[r] for r in rows],
        [{}] * len(ids),
        source="sync",
        contents=[_content(texts[r]) for r in rows],
    )
    assert (len(index.index), len(index)) == (140, copies + 100)
    index.save()
    index.close()
    index = LocalIndex(tmp_path, dims=128)
    assert (len(index.index), len(index)) == (140, copies + 100)
    missed = [j for j in range(40, 140) if [h.id for h in index.search(vectors[j], 1)] != [f"uniq-{j}"]]
    assert missed == []
    members = sorted(f"dup-{n}" for n in range(0, copies, 40))  # text 0: 100 documents
    hits = index.search(vectors[0], 112)  # then the nearest other texts
    assert len(hits) == 112 and {h.id for h in hits[:100]} == set(members)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].score == hits[99].score > hits[100].score
    assert [h.id for h in index.search(vectors[0], 3)] == members[:3]  # within a vector: id order
    # a text's documents leave one by one; its vector goes with the last one
    assert index.delete(members[1:]) == 99
    assert len(index.index) == 140 and index.search(vectors[0], 1)[0].id == members[0]
    index.upsert(
        [members[0]], vectors[41][None], [texts[41]], [{}], source="sync", contents=[_content(texts[41])]
    )
    assert (len(index.index), len(index)) == (139, copies + 1)
    assert {h.id for h in index.search(vectors[41], 2)} == {members[0], "uniq-41"}
    assert index.search(vectors[0], 1)[0].id != members[0]
    index.close()


def test_a_short_graph_walk_falls_back_to_an_exact_scan(
    scifact: tuple[list[str], np.ndarray], tmp_path: Path
) -> None:
    # Different contents can carry one vector (texts that tokenize alike): 400 separate points
    # in two identical clusters, which HNSW's walk reaches only part of.
    _texts, vectors = scifact
    index = LocalIndex(tmp_path, dims=128)
    rows = [0] * 200 + [1] * 200
    ids = [f"d{n}" for n in range(400)]
    index.upsert(ids, vectors[rows], ids, [{}] * 400, source="sync", contents=ids)
    assert len(index.index) == 400
    assert min(len(index.index.search(vectors[r], 400).keys) for r in (0, 1)) < 400  # short walk
    for r in (0, 1):
        hits = index.search(vectors[r], 400)
        assert len({h.id for h in hits}) == 400
        assert {h.id for h in hits[:200]} == {f"d{n}" for n in range(200 * r, 200 * r + 200)}


def test_many_small_updates_rebuild_the_graph(scifact: tuple[list[str], np.ndarray], tmp_path: Path) -> None:
    # Updates are remove + add and a patched graph loses recall; past a share of removals the
    # local graph is rebuilt, as the server's is. Afterwards it answers as a fresh build does.
    texts, vectors = scifact
    rng = np.random.default_rng(7)
    index = LocalIndex(tmp_path / "updated", dims=128)
    current = rng.permutation(140)[:120]  # distinct vectors: no ties between documents

    def put(docs: np.ndarray) -> None:
        index.upsert(
            [f"d{n}" for n in docs],
            vectors[current[docs]],
            [texts[r] for r in current[docs]],
            [{}] * len(docs),
            source="sync",
            contents=[_content(texts[r]) for r in current[docs]],
        )

    put(np.arange(120))
    for _round in range(50):
        docs = rng.choice(120, size=10, replace=False)
        free = np.setdiff1d(np.arange(140), np.delete(current, docs))
        current[docs] = rng.choice(free, size=10, replace=False)
        put(docs)
    # 500 documents moved, ~330 vectors left unused and removed: past 256 and a quarter of 120
    assert index.rebuilds >= 1 and index.removed_since_build < 256
    assert (len(index.index), len(index)) == (120, 120)
    fresh = LocalIndex(tmp_path / "fresh", dims=128)
    fresh.upsert(
        [f"d{n}" for n in range(120)],
        vectors[current],
        [texts[r] for r in current],
        [{}] * 120,
        source="sync",
        contents=[_content(texts[r]) for r in current],
    )
    for query in vectors[:40]:
        expected = {h.id for h in fresh.search(query, 10)}
        assert {h.id for h in index.search(query, 10)} == expected
    index.save()
    index.close()
    reopened = LocalIndex(tmp_path / "updated", dims=128)
    assert len(reopened) == 120 and reopened.removed_since_build < 256
    assert reopened.search(vectors[current[5]], 1)[0].score > 0.99
    for path in ("updated", "fresh"):
        assert len(list((tmp_path / path).glob("vectors.*.usearch"))) <= 1  # old generations go


def test_an_index_saved_before_vectors_were_shared_opens_and_updates(
    corpus: tuple[list[str], list[str], np.ndarray], tmp_path: Path
) -> None:
    import sqlite3

    from usearch.index import Index

    from edge_client.index import key_of

    ids, texts, vectors = corpus
    # the layout of the previous release: one vector per document under its own key
    db = sqlite3.connect(tmp_path / "docs.sqlite")
    db.executescript(
        "CREATE TABLE docs (key INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, text TEXT, metadata TEXT, "
        "source TEXT NOT NULL); CREATE TABLE state (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
    )
    db.executemany(
        "INSERT INTO docs VALUES (?, ?, ?, ?, 'sync')",
        [(key_of(i), i, t, "{}") for i, t in zip(ids, texts, strict=True)],
    )
    db.executemany("INSERT INTO state VALUES (?, ?)", [("dims", "128"), ("dtype", "f16"), ("sequence", "56")])
    db.commit()
    db.close()
    old = Index(ndim=128, metric="cos", dtype="f16")
    old.add(np.asarray([key_of(i) for i in ids], dtype=np.uint64), vectors)
    old.save(str(tmp_path / "vectors.f16.usearch"))
    index = LocalIndex(tmp_path, dims=128)
    assert len(index) == len(ids) and index.get_state("sequence") == "56"
    assert index.search(vectors[3], 1)[0].id == ids[3]
    index.upsert([ids[3]], vectors[4][None], [texts[4]], [{}], source="sync")  # moves to its own vector
    assert {h.id for h in index.search(vectors[4], 2)} == {ids[3], ids[4]}
    assert index.delete([ids[5]]) == 1 and len(index) == len(ids) - 1
    index.save()
    index.close()
    reopened = LocalIndex(tmp_path, dims=128)
    assert len(reopened) == len(ids) - 1 and reopened.search(vectors[6], 1)[0].id == ids[6]
