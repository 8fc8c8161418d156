"""The edge's derived files damaged (issue: resources, 4): a vector file cut short or garbage, a
sqlite file that is not a database, a bundle model file cut short or overwritten. Each is
detected, set aside or fetched again, and the client answers what the server holds: never an
exception that needs a person to delete files."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_client import EdgeClient
from embedcore import EdgeBundle
from tests._collections import ingest

DOCS: list[tuple[str, str, dict[str, Any]]] = [
    ("volcano", "Volcanoes erupt molten rock called lava from the Earth's mantle.", {}),
    ("violin", "A violin is a string instrument played with a bow.", {}),
    ("bread", "Sourdough bread rises with wild yeast and lactic acid bacteria.", {}),
    ("glacier", "Glaciers are slow rivers of ice that carve valleys.", {}),
]
LOCAL_TEXT = "Chess openings such as the Sicilian Defence shape the middle game."


def _prepared(live_server: Any, home: Path) -> str:
    """A synced collection with one local document too; the client closed (files on disk)."""
    collection = f"edge-damage-{uuid.uuid4().hex[:8]}"
    ingest(live_server.address, collection, DOCS)
    note = home.parent / "note.txt"
    note.write_text(LOCAL_TEXT)
    with EdgeClient(home, server=live_server.address) as client:
        client.init()
        client.sync(collection)
        assert client.add([note], collection=collection).documents == 1
    return collection


def _answers(client: EdgeClient, collection: str) -> None:
    """Every synced document and the local one are found locally as their text's best hit."""
    for doc_id, text, _ in DOCS:
        assert client.search_local(text, collection=collection, k=1)[0].id == doc_id
    assert client.search_local(LOCAL_TEXT, collection=collection, k=1)[0].id.endswith("note.txt#0")


@pytest.mark.parametrize("damage", ["vector file cut short", "vector file garbage"])
def test_damaged_vector_file_is_set_aside_resynced_and_reembedded(
    live_server: Any, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "edge"
    collection = _prepared(live_server, home)
    (vectors,) = (home / "collections" / collection).glob("vectors.*.usearch")
    if damage == "vector file cut short":
        os.truncate(vectors, vectors.stat().st_size - 208)
    else:
        vectors.write_bytes(os.urandom(vectors.stat().st_size))
    with EdgeClient(home, server=live_server.address) as client:
        index = client.index(collection)  # must not raise
        assert "damaged" in index.recovered and "damaged" in caplog.text
        assert len(index) == 1  # the local document, embedded again from its stored text
        report = client.sync(collection)
        assert report.upserts == len(DOCS) and report.documents == len(DOCS) + 1
        _answers(client, collection)
    assert vectors.with_name(vectors.name + ".damaged").is_file()


def test_damaged_sqlite_file_is_set_aside_and_resynced(live_server: Any, tmp_path: Path) -> None:
    home = tmp_path / "edge"
    collection = _prepared(live_server, home)
    db = home / "collections" / collection / "docs.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    with EdgeClient(home, server=live_server.address) as client:
        assert "sqlite" in client.index(collection).recovered
        client.sync(collection)
        for doc_id, text, _ in DOCS:  # the synced documents are back (local ones were in sqlite)
            assert client.search_local(text, collection=collection, k=1)[0].id == doc_id
    assert db.with_name("docs.sqlite.damaged").is_file()


@pytest.mark.parametrize("damage", ["model cut short", "model overwritten"])
def test_damaged_bundle_is_fetched_again(live_server: Any, tmp_path: Path, damage: str) -> None:
    home = tmp_path / "edge"
    collection = _prepared(live_server, home)
    manifest = EdgeBundle.load(home / "bundle").manifest
    model = home / "bundle" / (manifest.onnx_int8 or manifest.onnx_fp32)
    if damage == "model cut short":  # found by the size check at load
        os.truncate(model, model.stat().st_size // 2)
    else:  # same size: found when ONNX Runtime cannot load it
        model.write_bytes(os.urandom(model.stat().st_size))
    with EdgeClient(home, server=live_server.address) as client:
        _answers(client, collection)
    EdgeBundle.load(home / "bundle", verify=True)  # the installed bundle is whole again
