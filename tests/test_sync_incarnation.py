"""An edge notices when the server's collection is not the one it synced from.

A sequence number means something only within one incarnation of a collection. A wiped data
directory recreates the collection with its sequence starting over: before, the edge's next
sync from its old checkpoint reported success with nothing new, kept the deleted documents and
never got the new ones. Now the server answers ``reset`` and the edge takes everything again.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import grpc

from edge_client import EdgeClient
from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import EmbeddingServiceStub
from tests._collections import ingest, stub
from tests.server_harness import running_server

ARGS = ("--backend", "onnx", "--workers", "1")
NOTES: list[tuple[str, str, dict[str, Any]]] = [
    ("n1", "Water boils at 100 degrees Celsius at sea level.", {}),
    ("n2", "The Eiffel Tower is in Paris and was finished in 1889.", {}),
    ("n3", "Bees communicate the direction of flowers with a waggle dance.", {}),
    ("n4", "A sourdough starter is flour and water fermented by wild yeast.", {}),
    ("n5", "The Pacific is the largest and deepest ocean on Earth.", {}),
    ("n6", "Penguins are flightless birds of the southern hemisphere.", {}),
]
OTHER: list[tuple[str, str, dict[str, Any]]] = [
    ("o1", "Jupiter is the largest planet of the solar system.", {}),
    ("o2", "Basil keeps best in a glass of water on the counter.", {}),
    ("o3", "Basil keeps best in a glass of water on the counter.", {}),  # the same text as o2
]


def _sync_rpc(address: str, collection: str, since: int, incarnation: str) -> list[pb.SyncVectorsResponse]:
    with grpc.insecure_channel(address) as channel:
        fingerprint = EmbeddingServiceStub(channel).Info(pb.InfoRequest(), timeout=60).edge_bundle_fingerprint
    channel, service = stub(address)
    with channel:
        request = pb.SyncVectorsRequest(
            collection=collection,
            since_sequence=since,
            bundle_fingerprint=fingerprint,
            incarnation=incarnation,
        )
        return list(service.SyncVectors(request, timeout=120))


def test_an_edge_resyncs_a_collection_recreated_by_a_wiped_data_directory(tmp_path: Path) -> None:
    data, home = tmp_path / "data", tmp_path / "edge"
    with running_server(data, *ARGS) as server:
        ingest(server.address, "notes", NOTES)
        with EdgeClient(home, server=server.address) as client:
            client.init()
            first = client.sync("notes")
            assert (first.upserts, first.sequence, first.documents) == (6, 6, 6) and first.incarnation
            client.add([_note(tmp_path)], collection="notes")  # a document of the device's own
    shutil.rmtree(data)
    with running_server(data, *ARGS) as server:
        ingest(server.address, "notes", OTHER)  # the collection again, at sequence 3
        with EdgeClient(home, server=server.address) as client:
            report = client.sync("notes")
            assert report.full_resync and report.upserts == 3 and report.sequence == 3
            assert report.incarnation not in ("", first.incarnation)
            index = client.index("notes")
            assert report.documents == 4 == len(index)  # the 3 new ones and the device's own
            assert len(index.index) == 3  # o2 and o3 share one vector
            local = {h.id for h in client.search_local("boiling water", collection="notes", k=10)}
            assert local == {"o1", "o2", "o3", f"{_note(tmp_path)}#0"}
            answer = client.search("how hot does water boil", collection="notes", k=10, mode="auto")
            assert not {doc_id for doc_id, _, _ in NOTES} & {h.id for h in answer.results}
            again = client.sync("notes")
            assert not again.full_resync and again.upserts == 0 and again.sequence == 3


def _note(tmp_path: Path) -> Path:
    path = tmp_path / "mine.txt"
    if not path.exists():
        path.write_text("My bike lock code is written inside the garage door.\n")
    return path.resolve()


def test_a_checkpoint_ahead_of_the_head_or_of_no_known_incarnation_is_resynced(
    live_server: Any, tmp_path: Path
) -> None:
    collection = f"ahead-{uuid.uuid4().hex[:8]}"
    ingest(live_server.address, collection, OTHER)
    with EdgeClient(tmp_path, server=live_server.address) as client:
        client.init()
        first = client.sync(collection)
        with grpc.insecure_channel(live_server.address) as channel:
            info = EmbeddingServiceStub(channel).Info(pb.InfoRequest(), timeout=60)
        assert {c.name: c.incarnation for c in info.collections}[collection] == first.incarnation
        # the same incarnation, but a checkpoint the collection never reached
        index = client.index(collection)
        index.delete(["o1"])
        index.set_state("sequence", "99")
        index.save()
        report = client.sync(collection)
        assert report.full_resync and report.sequence == 3 and report.documents == 3
    incarnation = first.incarnation
    ahead = _sync_rpc(live_server.address, collection, 99, incarnation)
    assert ahead[0].reset and [c.id for m in ahead for c in m.changes] == ["o1", "o2", "o3"]
    assert not any(m.reset for m in ahead[1:]) and {m.incarnation for m in ahead} == {incarnation}
    for since, known, reset, changes in [
        (3, incarnation, False, 0),  # up to date
        (1, incarnation, False, 2),  # incremental
        (0, "", False, 3),  # a first sync
        (2, "", True, 3),  # a checkpoint of no known incarnation (a client from before them)
        (2, "0" * 32, True, 3),  # another incarnation
    ]:
        messages = _sync_rpc(live_server.address, collection, since, known)
        assert messages[0].reset is reset, (since, known)
        assert sum(len(m.changes) for m in messages) == changes, (since, known)
