"""``embed-server migrate`` on a stopped server's store: kill -9 at several random points of a
migration leaves the collection bound to exactly one model version with every document, and
the resumed migration completes without re-embedding what was finished; ``--rollback`` brings
back the old vectors without embedding; ``gc`` drops the old version after the retention.

The second model is the bundled one with a seeded orthogonal Dense head
(server.model_variants), built here; the collection is written by a real server."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from server.model import ModelSpec, load_spec
from server.model_variants import build_projected_model
from server.store import open_store
from server.store.versions import NEXT, PREV, hidden
from tests._collections import ingest
from tests.server_harness import running_server

COLLECTION = "mig"
N = 400
TOPICS = ["volcanoes", "violins", "tax law", "orbital mechanics", "sourdough", "glaciers", "chess"]


def _docs() -> list[tuple[str, str, dict[str, object]]]:
    return [
        (f"m{i:04d}", f"Short note {i} on {TOPICS[i % len(TOPICS)]}, item {i * 7919 % 1000}.", {"i": i})
        for i in range(N)
    ]


def _migrate(data: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "server", "migrate", COLLECTION, "--data-dir", str(data), *args]


def _run_until_killed(command: list[str], at_docs: int, delay_s: float) -> tuple[int, str]:
    """Run ``command``; SIGKILL it ``delay_s`` after its progress bar passed ``at_docs``.
    Returns (exit status, stderr)."""
    seen: list[bytes] = []
    armed = threading.Event()
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as process:

        def read() -> None:
            assert process.stderr is not None
            while chunk := process.stderr.read1(4096):  # type: ignore[attr-defined]
                seen.append(chunk)
                done = [int(m) for m in re.findall(rb"(\d+)/%d" % N, b"".join(seen[-4:]))]
                if done and max(done) >= at_docs and not armed.is_set():
                    armed.set()
                    threading.Timer(delay_s, process.kill).start()

        reader = threading.Thread(target=read)
        reader.start()
        code = process.wait(timeout=600)
        reader.join(timeout=60)
    return code, b"".join(seen).decode(errors="replace")


def _state(data: Path) -> tuple[str, int, int, np.ndarray]:
    """(serving fingerprint, its documents, documents already in the migration target,
    the serving vectors in id order)."""
    store = open_store(data)
    try:
        meta = store.collection(COLLECTION)
        assert meta is not None
        target = store.collection(hidden(COLLECTION, NEXT))
        _keys, ids, vectors = store.matrix(COLLECTION)
        assert ids == sorted(ids) and len(ids) == meta.documents
        assert vectors.shape == (meta.documents, meta.dimension)
        return meta.fingerprint, meta.documents, 0 if target is None else target.documents, vectors
    finally:
        store.close()


@pytest.fixture(scope="module")
def model_b(spec: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    return load_spec(str(build_projected_model(spec.path, tmp_path_factory.mktemp("models") / "b")))


@pytest.mark.slow  # a server start and several migrate runs
def test_kill9_during_migration_then_resume_rollback_gc(
    spec: ModelSpec, model_b: ModelSpec, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with running_server(data) as server:
        acks = ingest(server.address, COLLECTION, _docs())
        assert all(a.error.code == 0 for a in acks) and len(acks) == N
        assert server.stop() == 0
    fingerprint, documents, _, a_vectors = _state(data)
    assert (fingerprint, documents, a_vectors.shape) == (spec.fingerprint, N, (N, 384))

    rng = random.Random(16)
    finished_in_target = 0
    for at_docs in (0, N // 3, 2 * N // 3):
        code, err = _run_until_killed(_migrate(data, "--to", str(model_b.path)), at_docs, rng.uniform(0, 0.4))
        fingerprint, documents, in_target, vectors = _state(data)
        # Exactly one version serves, whole: the old one until the cutover, the new one after.
        assert documents == N
        assert fingerprint in (spec.fingerprint, model_b.fingerprint), err
        if fingerprint == spec.fingerprint:
            np.testing.assert_array_equal(vectors, a_vectors)
            assert in_target >= finished_in_target  # committed batches survive the kill
            finished_in_target = in_target
        assert code in (0, -9), err
        if fingerprint == model_b.fingerprint:  # cut over before the kill landed (or no kill)
            break

    done = subprocess.run(
        _migrate(data, "--to", str(model_b.path)), capture_output=True, text=True, timeout=600, check=False
    )
    fingerprint, documents, in_target, b_vectors = _state(data)
    assert (fingerprint, documents, in_target, b_vectors.shape) == (model_b.fingerprint, N, 0, (N, 256))
    if done.returncode == 0:  # not already cut over by a run the kill came too late for
        assert "embedded" in done.stdout, done.stdout + done.stderr
        embedded = int(re.search(r"(\d+) embedded", done.stdout).group(1))  # type: ignore[union-attr]
        skipped = int(re.search(r"(\d+) already migrated", done.stdout).group(1))  # type: ignore[union-attr]
        assert skipped == finished_in_target and embedded == N - finished_in_target, done.stdout
        assert finished_in_target > 0  # the kills did land inside the copy
    else:
        assert "already on model" in done.stderr, done.stderr

    # Rollback: A's very vectors, nothing embedded (the command starts no encoder).
    back = subprocess.run(
        _migrate(data, "--rollback"), capture_output=True, text=True, timeout=120, check=False
    )
    assert back.returncode == 0, back.stderr
    assert f"rolled back to {spec.fingerprint}" in back.stdout
    fingerprint, _, _, vectors = _state(data)
    assert fingerprint == spec.fingerprint
    np.testing.assert_array_equal(vectors, a_vectors)
    forward = subprocess.run(
        _migrate(data, "--rollback"), capture_output=True, text=True, timeout=120, check=False
    )
    assert forward.returncode == 0 and _state(data)[0] == model_b.fingerprint

    # gc keeps the previous version within the retention, then drops it.
    gc = [sys.executable, "-m", "server", "gc", "--data-dir", str(data)]
    kept = subprocess.run([*gc], capture_output=True, text=True, timeout=120, check=True)
    assert "dropped the previous model version" not in kept.stdout
    dropped = subprocess.run(
        [*gc, "--version-retention-hours", "0"], capture_output=True, text=True, timeout=120, check=True
    )
    assert f"dropped the previous model version of {COLLECTION!r}" in dropped.stdout
    assert int(re.search(r"removed (\d+)", dropped.stdout).group(1)) == N  # type: ignore[union-attr]
    store = open_store(data)
    try:
        assert store.collection(hidden(COLLECTION, PREV)) is None
    finally:
        store.close()
    again = subprocess.run(
        _migrate(data, "--rollback"), capture_output=True, text=True, timeout=120, check=False
    )
    assert again.returncode == 2 and "no previous version" in again.stderr
