"""Chunking on the edge (issue 13): the edge bundle cuts long texts exactly as the server does,
and ``edge-client add`` stores a paragraph longer than the model reads as a chunked document
(real tokenizer, real ONNX Runtime, real usearch, the real edge bundle; no server)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import edge_client._client
from edge_client import EdgeClient
from embedcore import EdgeBundle
from server.chunking import chunker_for
from tests._collections import scifact_docs


def _abstracts(skip: int, count: int) -> list[str]:
    return [" ".join(text.split()) for _, text, _ in scifact_docs(count, skip=skip)]


def _cuts(spans: list[Any]) -> list[tuple[int, int, int]]:
    return [(s.start, s.stop, s.tokens) for s in spans]


@pytest.mark.parametrize("prompt", ["", "passage: "])
def test_the_edge_bundle_cuts_long_texts_as_the_server(
    spec: Any, edge_bundle: EdgeBundle, prompt: str
) -> None:
    bundle, model = edge_bundle, spec
    if prompt:  # a model with a document prompt: both sides take its tokens off the budget
        manifest = dataclasses.replace(
            edge_bundle.manifest, prompts={"passage": prompt}, document_prompt_name="passage"
        )
        bundle = EdgeBundle(edge_bundle.directory, manifest, edge_bundle.projection)
        model = dataclasses.replace(spec, prompts={"passage": prompt}, document_prompt_name="passage")
    edge, server = bundle.chunker(), chunker_for(model)
    assert edge.budget == server.budget == spec.max_tokens - 2 - (2 if prompt else 0)  # "passage", ":"
    texts = [
        "\n\n".join(_abstracts(0, 8)),  # paragraphs: line-break anchors
        " ".join(_abstracts(20, 6)),  # one paragraph, as `add` sees it: sentence anchors
        " ".join(f"w{i % 97}" for i in range(3000)),  # no sentence at all: word starts
    ]
    for text in texts:
        cut = _cuts(edge.split(text))
        assert len(cut) > 3
        assert cut == _cuts(server.split(text))


def _home(edge_bundle: EdgeBundle, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(edge_bundle.directory, home / "bundle")  # as `init` installs it; no server needed
    return home


def _notes(tmp_path: Path) -> tuple[Path, str, str]:
    """A file of two short paragraphs and one long one (six abstracts); the long one's last
    abstract (past what the model reads of it)."""
    long = " ".join(_abstracts(40, 6))
    tail = _abstracts(45, 1)[0]
    notes = tmp_path / "notes.txt"
    notes.write_text(
        "Grocery list: oat milk, lentils, and spinach.\n\n"
        f"{long}\n\n"
        "The boiler makes a knocking noise when the heating starts in the morning.\n"
    )
    return notes, long, tail


def test_a_long_paragraph_is_chunked_and_found_by_its_tail(edge_bundle: EdgeBundle, tmp_path: Path) -> None:
    notes, long, tail = _notes(tmp_path)
    spans = edge_bundle.chunker().split(long)
    with EdgeClient(_home(edge_bundle, tmp_path)) as client:
        report = client.add([notes], collection="mine")
        assert (report.documents, report.chunked, report.chunks, report.cut) == (3, 1, len(spans), 0)
        # one vector per short paragraph, one per chunk of the long one
        assert len(client.index("mine").index) == 2 + len(spans)
        found = client.search(tail, collection="mine", k=3, mode="local")
        short = client.search("why is my heating system banging", collection="mine", k=1, mode="local")
    top = found.results[0]
    assert top.id == f"{notes.resolve()}#1" and top.text == long
    assert top.score > 0.8  # its chunk, not the document's beginning, answered
    start = long.index(tail)
    best = max(spans, key=lambda s: min(s.stop, start + len(tail)) - max(s.start, start))
    assert (top.snippet_start, top.snippet_stop) == (best.start, best.stop) and top.snippet_start > 0
    assert top.snippet == long[best.start : best.stop]
    hit = short.results[0]  # a short paragraph: one vector, embedded whole, as before
    assert hit.id == f"{notes.resolve()}#2" and hit.snippet == ""
    assert (hit.snippet_start, hit.snippet_stop) == (0, len(hit.text))


def test_no_chunking_keeps_truncation(edge_bundle: EdgeBundle, tmp_path: Path) -> None:
    notes, _long, tail = _notes(tmp_path)
    home = _home(edge_bundle, tmp_path)
    command = ["add", str(notes), "--home", str(home), "--collection", "cut", "--no-chunking"]
    result = subprocess.run(
        [sys.executable, "-m", "edge_client", *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "added 3 paragraphs to the local index 'cut'"
    with EdgeClient(home) as client:
        assert len(client.index("cut").index) == 3
        found = client.search(tail, collection="cut", k=3, mode="local")
        report = client.add([notes], collection="chunked")
        assert "1 longer than the model reads, chunked into" in report.summary()
    hit = next(h for h in found.results if h.id == f"{notes.resolve()}#1")
    assert hit.snippet == "" and hit.score < 0.5  # only its beginning was embedded: the tail is lost


def test_only_the_first_chunk_max_chars_are_embedded(
    edge_bundle: EdgeBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notes, long, _tail = _notes(tmp_path)
    limit = len(long) // 2
    monkeypatch.setattr(edge_client._client, "CHUNK_MAX_CHARS", limit)  # 65,536: seconds of ONNX
    with EdgeClient(_home(edge_bundle, tmp_path)) as client:
        report = client.add([notes], collection="mine")
        assert (report.documents, report.chunked, report.cut) == (3, 1, 1)
        assert f"over {limit:,} characters" in report.summary()
        index = client.index("mine")
        rows = index.db.execute("SELECT start, stop FROM chunks ORDER BY ord").fetchall()
        stored = index.db.execute("SELECT text FROM docs WHERE id = ?", (f"{notes.resolve()}#1",)).fetchone()
    assert len(rows) == report.chunks > 1 and rows[-1][1] <= limit  # the rest is not embedded
    assert stored[0] == long  # but stored
