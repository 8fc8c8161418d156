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
