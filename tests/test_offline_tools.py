"""The offline store tools (``gc``, ``reembed``, ``export-edge``) next to a running server, and
``reembed`` killed midway.

A running server holds its store: a tool pointed at the same ``--data-dir`` is refused with a
message saying so (exit 2), and the server's calls in flight go on. ``reembed`` writes a
collection's documents while the collection stays marked with its old model and switches it
only at the end: killed midway, the collection is still the old model's (refused by the new one,
never served as a mix), and a rerun finishes, reusing what the killed run had stored.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from embedcore import EdgeBundle
from protos.embedding.v1 import embedding_pb2 as pb
from server.model import ModelSpec, load_spec
from server.store import Upsert, content_hash, open_store
from tests._collections import search, stub
from tests.server_harness import FAST_START, ServerProcess

COMMAND = [sys.executable, "-m", "server"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=300)


def test_gc_and_reembed_during_an_ingest_are_refused_and_the_ingest_goes_on(
    live_server: ServerProcess,
) -> None:
    outgoing: queue.Queue[pb.IngestRequest | None] = queue.Queue()
    channel, service = stub(live_server.address)
    with channel:
        acks = service.Ingest(iter(outgoing.get, None), timeout=300)
        outgoing.put(pb.IngestRequest(collection="tools-gc", id="first", text="Glaciers carve valleys."))
        assert next(acks).sequence == 1  # the ingest is in flight
        for tool in (["gc"], ["reembed", *FAST_START]):
            done = _run(*tool, "--data-dir", str(live_server.data_dir))
            assert done.returncode == 2, (tool, done.stdout, done.stderr[-2000:])
            assert f"is in use by process {live_server.process.pid} " in done.stderr
            assert "stop it first" in done.stderr
            assert "Traceback" not in done.stderr
        outgoing.put(pb.IngestRequest(collection="tools-gc", id="second", text="Sourdough needs a starter."))
        outgoing.put(None)
        rest = list(acks)
    assert [(a.id, a.sequence, a.HasField("error")) for a in rest] == [("second", 2, False)]
    hits = search(live_server.address, "tools-gc", "bread starter", k=2, exact=True).hits
    assert [h.id for h in hits] == ["second", "first"]


def test_export_edge_on_a_running_servers_store_is_refused(
    live_server: ServerProcess, tmp_path: Path
) -> None:
    done = _run(
        "export-edge", "--data-dir", str(live_server.data_dir), "--out", str(tmp_path / "b"), *FAST_START
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"is in use by process {live_server.process.pid} " in done.stderr


COLLECTION = "interrupted"
N = 700  # three reembed batches of 256


def _store_with_collection(data: Path, spec: ModelSpec, bundle: EdgeBundle) -> list[str]:
    """A store with COLLECTION under ``spec``'s model (vectors from its ONNX graph); its texts."""
    topics = ["tides", "ferns", "opera", "basalt", "owls", "kites", "yeast"]
    texts = [f"Field note {i} on {topics[i % len(topics)]}, entry {i * 7919 % 1000}." for i in range(N)]
    vectors = bundle.encoder(int8=False).encode(texts)
    store = open_store(data)
    try:
        store.upsert(
            [
                Upsert(COLLECTION, f"n{i}", content_hash(spec.fingerprint, "", t), t, {}, v)
                for i, (t, v) in enumerate(zip(texts, vectors, strict=True))
            ],
            fingerprint=spec.fingerprint,
            dimension=spec.dimension,
        )
    finally:
        store.close()
    return texts


def _kill_after_first_batch(argv: list[str]) -> str:
    """Run ``reembed``; SIGKILL it (and its encoder worker) once its progress bar shows the
    first batch stored and before the last. Returns its stderr up to then."""
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, bufsize=0)
    assert process.stderr is not None
    seen = b""
    try:
        while True:
            chunk = os.read(process.stderr.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"reembed ended before it was killed:\n{seen.decode()[-3000:]}")
            seen += chunk
            done = [int(n) for n in re.findall(rb"(\d+)/" + str(N).encode(), seen)]
            if any(0 < n < N for n in done):
                break
        workers = psutil.Process(process.pid).children(recursive=True)
        process.kill()
        for worker in workers:
            worker.kill()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(60)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    return str(seen.decode(errors="replace"))


@pytest.mark.slow  # two reembed runs, each starting an encoder worker
def test_reembed_killed_midway_leaves_one_model_and_a_rerun_finishes(
    spec: ModelSpec, edge_bundle: EdgeBundle, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    texts = _store_with_collection(data, spec, edge_bundle)
    # "another model": the same weights with an edited config file, hence another fingerprint
    copy = tmp_path / "model-copy"
    shutil.copytree(spec.path, copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")
    new = load_spec(str(copy))
    argv = [*COMMAND, "reembed", "--data-dir", str(data), "--model", str(copy), *FAST_START]

    _kill_after_first_batch(argv)
    store = open_store(data)
    try:
        (row,) = store.collection_rows(new.fingerprint)
        # Not switched: the new model's server refuses it (stale), the old one's still owns it.
        assert row.stale and row.model_fingerprint == spec.fingerprint and row.documents == N
        missing = store.missing_hashes([content_hash(new.fingerprint, "", t) for t in texts])
        assert 0 < len(missing) < N  # the killed run had stored part of the new vectors
    finally:
        store.close()

    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reused = int(re.search(rf"'{COLLECTION}': {N} docs, \d+ embedded, (\d+) reused", done.stdout).group(1))  # type: ignore[union-attr]
    assert reused == N - len(missing)  # the rerun picked up where the killed one stopped
    store = open_store(data)
    try:
        (row,) = store.collection_rows(new.fingerprint)
        assert not row.stale and row.documents == N
        docs = store.documents(COLLECTION, [f"n{i}" for i in range(N)])
        assert all(
            d is not None and d.content_hash == content_hash(new.fingerprint, "", t)
            for d, t in zip(docs, texts, strict=True)
        )
        assert store.gc() == (N, N)  # the old model's vectors, no longer referenced
    finally:
        store.close()
