"""kill -9 during a long ingest, several times at random moments: every acknowledged document
survives, the store opens cleanly, and sending everything again embeds only the lost tail. Then
kill -9 after deletes and updates were acknowledged but never saved into the index file: the
restarted server loads the older file and brings it up to date with the store (deleted documents
gone, updated ones found by their new text)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from usearch.index import Index

from protos.embedding.v1 import embedding_pb2 as pb
from server.model import load_spec
from server.store import content_hash, open_store
from tests._collections import requests, search, stub
from tests.server_harness import running_server

COLLECTION = "crash"
N = 400


def _docs() -> list[tuple[str, str, dict[str, object]]]:
    topics = [
        "volcanoes",
        "violins",
        "tax law",
        "orbital mechanics",
        "sourdough",
        "glaciers",
        "chess openings",
    ]
    return [
        (f"c{i:04d}", f"Short note {i} on {topics[i % len(topics)]}, item {i * 7919 % 1000}.", {"i": i})
        for i in range(N)
    ]


def _ingest_until_killed(
    address: str, process: subprocess.Popen[bytes], kill_at_ack: int, delay_s: float
) -> tuple[list[pb.IngestAck], bool]:
    """Stream every doc; SIGKILL the server ``delay_s`` after ack number ``kill_at_ack``.
    Returns the acks and whether the stream finished before the kill.

    Counting acks (not seconds from the start) keeps the kill inside the ingest however fast
    the encoder is; the extra delay lands it at a random point of the server's next commit.
    Only the kill may end the stream early: any other error fails the test.
    """
    acks = []
    timer = threading.Timer(delay_s, process.kill)
    channel, service = stub(address)
    finished = False
    with channel:
        try:
            for ack in service.Ingest(iter(requests(COLLECTION, _docs())), timeout=300):
                acks.append(ack)
                if len(acks) == kill_at_ack:
                    timer.start()
            finished = True
        except grpc.RpcError as exc:
            killed = timer.finished.is_set()  # the timer ran process.kill()
            if not killed or exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise AssertionError(
                    f"the ingest failed without the kill: {exc.code()} {exc.details()}"
                ) from exc
        finally:
            if timer.ident is None:  # never started (the stream ended first): kill now, mid-test
                process.kill()
            else:
                timer.join()  # (joining a timer never started raised over the real failure)
    return acks, finished


def _check_store(data: Path, acked: dict[str, tuple[str, int]]) -> int:
    """Open the store as a fresh process would: every acked doc is there with its hash."""
    spec = load_spec()
    store = open_store(data)
    try:
        meta = store.collection(COLLECTION)
        docs = store.documents(COLLECTION, list(acked))
        for (doc_id, (chash, seq)), doc in zip(acked.items(), docs, strict=True):
            assert doc is not None, f"acknowledged {doc_id} lost"
            assert doc.content_hash.hex() == chash and doc.sequence == seq
            assert doc.content_hash == content_hash(spec.fingerprint, "", doc.text or "")
        assert store.missing_hashes([d.content_hash for d in docs if d is not None]) == set()
        return meta.documents if meta else 0
    finally:
        store.close()


@pytest.mark.slow  # several server starts
def test_kill_9_during_ingest_loses_no_acknowledged_document(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rng = np.random.default_rng(20261126)
    acked: dict[str, tuple[str, int]] = {}
    kills = 0
    for _ in range(3):
        # Small commits, so a kill can land between, during or right after many of them.
        with running_server(data, "--ingest-commit-docs", "16") as server:
            acks, finished = _ingest_until_killed(
                server.address, server.process, int(rng.integers(1, N // 2)), float(rng.uniform(0, 0.05))
            )
            assert server.process.wait(60) == -signal.SIGKILL
        for ack in acks:
            assert not ack.HasField("error")
            if ack.id in acked:  # acknowledged before a previous kill: a cache hit now, same sequence
                assert ack.cached and (ack.content_hash, ack.sequence) == acked[ack.id]
            acked[ack.id] = (ack.content_hash, ack.sequence)
        kills += not finished
        stored = _check_store(data, acked)
        assert stored >= len(acked)  # the unacknowledged tail may be there too, never less
    assert kills >= 2  # the random moments really interrupted the ingest

    # Every document once more: the acknowledged ones are hits; the index file is saved at
    # start-up only (long save interval), so deletes and updates acknowledged afterwards are in
    # the store's change log alone when the server is killed.
    deleted = [d[0] for d in _docs()[:10]]
    updated = {
        d[0]: f"Revised note {i}: lighthouses keep a fog horn, version {i * 31}."
        for i, d in enumerate(_docs()[10:20])
    }
    with running_server(data, "--index-save-interval-s", "3600") as server:
        channel, service = stub(server.address)
        with channel:
            final = list(service.Ingest(iter(requests(COLLECTION, _docs())), timeout=300))
            assert len(final) == N and all(a.cached for a in final if a.id in acked)
            assert all(a.content_hash == acked[a.id][0] for a in final if a.id in acked)
            reply = service.Delete(pb.DeleteRequest(collection=COLLECTION, ids=deleted), timeout=60)
            assert reply.deleted == len(deleted)
            changes: list[tuple[str, str, dict[str, object]]] = [
                (doc_id, text, {}) for doc_id, text in updated.items()
            ]
            update_acks = list(service.Ingest(iter(requests(COLLECTION, changes)), timeout=120))
            assert len(update_acks) == len(changes) and not any(a.HasField("error") for a in update_acks)
            head = max(a.sequence for a in update_acks)
        saved, saved_points = _saved_index(data)
        server.process.kill()
        assert server.process.wait(60) == -signal.SIGKILL
    assert saved < reply.sequence < head  # the file predates the deletes and updates
    # ... and holds the points the reconcile must remove: every document stored at start-up
    # (the deleted ones and the updated ones' old texts among them), one point per content.
    assert saved_points == stored, (saved_points, stored)

    with running_server(data) as server:
        log = server.log()
        # The older file was loaded and reconciled with the store up to its head, not rebuilt
        # from scratch (which would hide a reconcile that misses changes).
        # Qualified by the logger: the lexical index logs the same words for its own rebuild.
        assert f"server.store.index: index '{COLLECTION}' loaded at sequence {head}" in log, log[-2000:]
        assert f"server.store.index: index '{COLLECTION}' missing or outdated" not in log
        exact = search(server.address, COLLECTION, "sourdough", k=N, exact=True)
        approx = search(server.address, COLLECTION, "sourdough", k=N)
        assert len(exact.hits) == len(approx.hits) == N - len(deleted)
        for doc_id, text, _ in _docs()[:10]:  # a deleted document's own text no longer finds it
            hits = search(server.address, COLLECTION, text, k=5, prompt_name="").hits
            assert len(hits) == 5 and doc_id not in {h.id for h in hits}
        for doc_id, text in updated.items():  # an updated document is found by its new text
            hit = search(server.address, COLLECTION, text, k=1, prompt_name="").hits[0]
            assert hit.id == doc_id and hit.score > 0.99 and hit.text == text
        doc_id, text, _ = _docs()[123]
        assert search(server.address, COLLECTION, text, k=1, prompt_name="").hits[0].id == doc_id
    survivors = {
        a.id: (a.content_hash, a.sequence) for a in final if a.id not in deleted and a.id not in updated
    }
    assert _check_store(data, survivors) == N - len(deleted)
    # The reconciled index, saved at the clean stop, holds exactly the live contents: the
    # deleted documents' and the old texts' points were removed from the graph, not only hidden.
    assert _saved_index(data) == (head, N - len(deleted))


def _saved_index(data: Path) -> tuple[int, int]:
    """(change-log sequence, points) of the collection's saved index file."""
    (sidecar,) = (data / "indexes").glob("*.json")
    meta = json.loads(sidecar.read_text())
    index = Index.restore(str(sidecar.with_name(f"{sidecar.stem}.{meta['generation']}.usearch")))
    assert index is not None
    return int(meta["sequence"]), len(index)
