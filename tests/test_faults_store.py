"""Faults of the store and its derived index files, without a server: a full disk is StorageFull
(nothing half-written, writes resume once space is freed), a damaged LMDB file refuses to open
with what to do, a damaged index file is set aside and rebuilt from the store."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from server.errors import StorageFull
from server.store import Indexes, StoreError, Upsert, content_hash, open_store
from tests._small_fs import fill, small_filesystem

FP = "model@0001"
DIMS = 32


def _docs(start: int, n: int, text_bytes: int = 8) -> list[Upsert]:
    rng = np.random.default_rng(start)
    vectors = rng.standard_normal((n, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        Upsert("c", f"d{j}", content_hash(FP, "", f"t{j}"), f"t{j}".ljust(text_bytes), {}, v)
        for j, v in enumerate(vectors, start)
    ]


def test_full_disk_is_storage_full_and_writes_resume_when_space_is_freed(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small", 16) as mount:
        filler = mount / "filler"
        fill(filler)
        os.truncate(filler, filler.stat().st_size - (4 << 20))  # 4 MiB left for the store
        store = open_store(mount / "data")
        try:
            stored: list[str] = []
            with pytest.raises(StorageFull) as raised:
                for batch in range(100):  # 100 x 64 documents of 4 KiB: far more than 4 MiB
                    docs = _docs(batch * 64, 64, text_bytes=4096)
                    store.upsert(docs, fingerprint=FP, dimension=DIMS)
                    stored += [d.doc_id for d in docs]
            message = raised.value.message
            assert str(mount / "data") in message and "MiB free" in message, message
            assert isinstance(raised.value, StoreError)  # tools (gc, reembed) catch StoreError
            assert stored  # some batches went in before the disk filled
            # every committed document is intact; the refused batch left nothing behind
            records = store.documents("c", stored)
            assert all(r is not None for r in records)
            assert store.collection("c").documents == len(stored)  # type: ignore[union-attr]
            filler.unlink()  # space freed: writes go on in the same process
            store.upsert(_docs(10_000, 64, text_bytes=4096), fingerprint=FP, dimension=DIMS)
            assert store.collection("c").documents == len(stored) + 64  # type: ignore[union-attr]
        finally:
            store.close()


@pytest.mark.parametrize("damage", ["garbage", "cut short", "emptied"])
def test_damaged_store_refuses_to_open_and_says_what_to_do(tmp_path: Path, damage: str) -> None:
    store = open_store(tmp_path)
    store.upsert(_docs(0, 500, text_bytes=200), fingerprint=FP, dimension=DIMS)
    store.close()
    data = tmp_path / "store" / "lmdb" / "data.mdb"
    size = data.stat().st_size
    if damage == "garbage":
        data.write_bytes(os.urandom(size))
    elif damage == "cut short":  # reading the missing pages would be SIGBUS, not an error
        os.truncate(data, size // 3)
    else:
        os.truncate(data, 0)  # would be taken for a new, empty store
    with pytest.raises(StoreError) as raised:
        open_store(tmp_path)
    message = str(raised.value)
    assert "damaged" in message and "backup" in message and str(tmp_path / "store") in message, message
    # the lock was released: the refusal is about the damage, not about a second process
    with pytest.raises(StoreError, match="damaged"):
        open_store(tmp_path)


def _indexes(store, directory: Path) -> Indexes:  # type: ignore[no-untyped-def]
    return Indexes(store, directory, fingerprint=FP, ndim=DIMS, metric="ip", dtype="f16")


@pytest.mark.parametrize("damage", ["cut by 208 bytes", "garbage", "groups table garbage", "sidecar garbage"])
def test_damaged_index_file_is_set_aside_and_rebuilt(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(tmp_path)
    try:
        docs = _docs(0, 300)
        store.upsert(docs, fingerprint=FP, dimension=DIMS)
        directory = tmp_path / "idx"
        first = _indexes(store, directory)
        first.get("c")
        assert first.save_all() == 1
        (usearch,) = directory.glob("*.usearch")
        (groups,) = directory.glob("*.groups.npz")
        (sidecar,) = directory.glob("*.json")
        if damage == "cut by 208 bytes":
            os.truncate(usearch, usearch.stat().st_size - 208)
        elif damage == "garbage":
            usearch.write_bytes(os.urandom(usearch.stat().st_size))
        elif damage == "groups table garbage":
            groups.write_bytes(os.urandom(groups.stat().st_size))
        else:
            sidecar.write_bytes(b"\x00{not json")
        index = _indexes(store, directory).get("c")  # must not raise
        assert len(index) == 300
        assert index.rebuilds == 0 and index.sequence == 300
        keys, _ = index.search(docs[7].vector, 1)  # type: ignore[arg-type]
        assert store.ids_for_keys("c", list(keys)) == ["d7"]
        assert "damaged" in caplog.text and "rebuilding" in caplog.text
        assert list(directory.glob("*.damaged"))  # kept for a post-mortem, out of the way
    finally:
        store.close()


def test_failed_index_save_on_a_full_disk_removes_its_partial_files(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    try:
        with small_filesystem(tmp_path / "small", 8) as mount:
            store.upsert(_docs(0, 50), fingerprint=FP, dimension=DIMS)
            directory = mount / "idx"
            indexes = _indexes(store, directory)
            index = indexes.get("c")
            assert indexes.save_all() == 1
            before = sorted(p.name for p in directory.iterdir())
            store.upsert(_docs(50, 8_000), fingerprint=FP, dimension=DIMS)
            index.catch_up(store)
            filler = mount / "filler"
            fill(filler)
            os.truncate(filler, filler.stat().st_size - (256 << 10))  # far less than the index
            with pytest.raises((RuntimeError, OSError)):  # usearch: RuntimeError; numpy: OSError
                indexes.save_all()
            # the partial new generation is gone (it would only hold the space); the saved
            # generation still rules
            assert sorted(p.name for p in directory.iterdir()) == before
            filler.unlink()
            assert indexes.save_all() == 1  # and the next save goes through
            assert len(_indexes(store, directory).get("c")) == 8_050
    finally:
        store.close()
