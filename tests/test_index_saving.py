"""Vector indexes are saved on a timer while the server runs, never by the calls themselves (one
small Ingest or Delete must not rewrite a large index file), and at shutdown; a restart loads
the saved file instead of rebuilding it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from protos.embedding.v1 import embedding_pb2 as pb
from tests._collections import requests, scifact_docs, search, stub
from tests.server_harness import running_server

COLLECTION = "saved-on-a-timer"


def _saved_sequence(data: Path) -> int:
    """The change-log sequence the saved index file reflects (0 while none is saved)."""
    sidecars = list((data / "indexes").glob("*.json"))
    return max((int(json.loads(p.read_text())["sequence"]) for p in sidecars), default=0)


def _wait_saved(data: Path, sequence: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _saved_sequence(data) < sequence:
        assert time.monotonic() < deadline, f"no index saved at sequence {sequence} within {timeout}s"
        time.sleep(0.05)  # polling an observable file, bounded by the deadline


def test_indexes_are_saved_on_a_timer_and_at_shutdown_not_per_call(tmp_path: Path) -> None:
    data = tmp_path / "data"
    docs = scifact_docs(24)
    # The timer never fires in this run: whatever is saved while it runs, a call saved.
    with running_server(data, "--index-save-interval-s", "3600") as server:
        channel, service = stub(server.address)
        with channel:
            acks = list(service.Ingest(iter(requests(COLLECTION, docs)), timeout=120))
            assert _saved_sequence(data) == 0
            top = search(server.address, COLLECTION, docs[5][1], k=1, prompt_name="").hits[0]
            assert top.id == docs[5][0]
            deleted = service.Delete(pb.DeleteRequest(collection=COLLECTION, ids=[docs[5][0]]), timeout=30)
            assert deleted.sequence == max(a.sequence for a in acks) + 1
            assert _saved_sequence(data) == 0  # neither the Ingest, the Search nor the Delete saved
        assert server.stop() == 0
    assert _saved_sequence(data) == deleted.sequence  # saved at shutdown

    with running_server(data, "--index-save-interval-s", "0.2") as server:
        loaded = f"server.store.index: index '{COLLECTION}' loaded at sequence {deleted.sequence}"
        assert loaded in server.log()
        hits = search(server.address, COLLECTION, docs[5][1], k=24, prompt_name="").hits
        assert len(hits) == 23 and docs[5][0] not in {h.id for h in hits}
        channel, service = stub(server.address)
        with channel:
            again = service.Delete(pb.DeleteRequest(collection=COLLECTION, ids=[docs[6][0]]), timeout=30)
        _wait_saved(data, again.sequence)  # the running server's timer saved the change
