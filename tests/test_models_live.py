"""Several models in one server, and a collection migrated between them online.

One real server serves the bundled model as "a" and a second real model as "b" (the bundled
transformer with a seeded orthogonal Dense head, server.model_variants, built here), one worker
each. A collection on "a" is migrated to "b" while a client searches and ingests without pause:
every search answers with hits, answers come from "a" until the cutover and from "b" after it
(the response's model fingerprint, and its scores, which are each model's cosines), documents
ingested meanwhile are searchable afterwards, and a rollback restores "a"'s very results
without embedding anything (the bulk encoder counters do not move)."""

from __future__ import annotations

import contextlib
import json
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import CollectionServiceStub, EmbeddingServiceStub
from server.model import ModelSpec, load_spec
from server.model_variants import build_projected_model
from tests._collections import ingest, scifact_docs, scifact_queries
from tests.server_harness import ServerProcess, free_port, running_server

COLLECTION = "moving"
QUERY = scifact_queries(1)[0]


@dataclass
class Served:
    server: ServerProcess
    a: ModelSpec
    b: ModelSpec
    metrics_port: int
    http_port: int
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.server.address)

    @property
    def embed(self) -> EmbeddingServiceStub:
        return EmbeddingServiceStub(self.channel)

    @property
    def collections(self) -> CollectionServiceStub:
        return CollectionServiceStub(self.channel)

    def bulk_items(self) -> float:
        """Inputs the encoders computed at bulk priority (Prometheus counter)."""
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30)
            .read()
            .decode()
        )
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('embed_items_total{priority="bulk"}')
        )


@pytest.fixture(scope="module")
def served(spec: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("models-live")
    b = load_spec(str(build_projected_model(spec.path, root / "model-b")))
    metrics_port, http_port = free_port(), free_port()
    args = ("--model", "a=all-MiniLM-L6-v2", "--model", f"b={b.path}", "--extra-model-workers", "1",
            "--metrics-port", str(metrics_port), "--http-port", str(http_port))  # fmt: skip
    with running_server(root / "data", *args) as server:
        result = Served(server, spec, b, metrics_port, http_port)
        try:
            yield result
        finally:
            result.channel.close()


def _vectors(served: Served, model: str, texts: list[str]) -> np.ndarray:
    reply = served.embed.Embed(
        pb.EmbedRequest(inputs=texts, options=pb.EmbedOptions(model=model)), timeout=120
    )
    return np.stack([np.frombuffer(e.data, "<f4") for e in reply.embeddings])


def _chunk_vectors(served: Served, model: str, texts: list[str]) -> list[np.ndarray]:
    """Per text, the vectors of its chunks as Ingest stores them ((chunks, dims) each)."""
    options = pb.EmbedOptions(model=model, chunking=True)
    reply = served.embed.Embed(pb.EmbedRequest(inputs=texts, options=options), timeout=120)
    return [np.stack([np.frombuffer(c.embedding.data, "<f4") for c in item.chunks]) for item in reply.chunked]


def test_info_lists_models_and_requests_pick_one(served: Served) -> None:
    info = served.embed.Info(pb.InfoRequest(), timeout=30)
    assert [(m.name, m.fingerprint, m.dimensions, m.is_default, m.workers) for m in info.models] == [
        ("a", served.a.fingerprint, 384, True, 1),
        ("b", served.b.fingerprint, 256, False, 1),
    ]
    assert info.model_fingerprint == served.a.fingerprint  # the default's fields, as before
    texts = ["A man is eating food.", "A man is eating a piece of bread."]
    a, b = _vectors(served, "a", texts), _vectors(served, "b", texts)
    assert a.shape == (2, 384) and b.shape == (2, 256)
    np.testing.assert_allclose(_vectors(served, "", texts), a)  # no name: the default
    reply = served.embed.Embed(pb.EmbedRequest(inputs=texts, options=pb.EmbedOptions(model="b")), timeout=60)
    assert reply.model_fingerprint == served.b.fingerprint
    with pytest.raises(grpc.RpcError) as info_error:
        served.embed.Embed(pb.EmbedRequest(inputs=texts, options=pb.EmbedOptions(model="c")), timeout=60)
    assert info_error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "model 'c' is not served here; this server serves 'a', 'b'" in info_error.value.details()
    # A stream item naming an unknown model fails in-band; the stream goes on.
    items = [
        pb.EmbedStreamRequest(id="x", input="hello", options=pb.EmbedOptions(model="c")),
        pb.EmbedStreamRequest(id="y", input="hello", options=pb.EmbedOptions(model="b")),
    ]
    answers = list(served.embed.EmbedStream(iter(items), timeout=60))
    assert answers[0].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert answers[1].embedding.dims == 256
    # The separator of a collection's hidden versions is not a name clients may use.
    (ack,) = ingest(served.server.address, "moving\x1fnext", [("x", "text", {})])
    assert ack.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "U+001F" in ack.error.message
    with pytest.raises(grpc.RpcError) as search_error:
        served.collections.Search(pb.SearchRequest(collection="moving\x1fprev", query="q"), timeout=60)
    assert search_error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # OpenAI's HTTP route: "model" picks one; an unknown name is 404 naming the served ones.
    reply = _post(served, {"model": "b", "input": texts})
    assert reply["model"] == "b" and len(reply["data"][0]["embedding"]) == 256
    np.testing.assert_allclose(np.array([d["embedding"] for d in reply["data"]]), b, atol=1e-6)
    assert len(_post(served, {"model": "all-MiniLM-L6-v2", "input": texts})["data"][1]["embedding"]) == 384
    with pytest.raises(urllib.error.HTTPError) as http_error:
        _post(served, {"model": "zz", "input": texts})
    assert http_error.value.code == 404 and "serves 'a', 'b'" in http_error.value.read().decode()


def _post(served: Served, body: dict[str, object]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{served.http_port}/v1/embeddings",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


@dataclass
class _Load:
    """A client searching and ingesting without pause, from its own thread."""

    served: Served
    stop: threading.Event = field(default_factory=threading.Event)
    answers: list[tuple[str, list[str], list[float]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ingested: list[str] = field(default_factory=list)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                reply = self.served.collections.Search(
                    pb.SearchRequest(collection=COLLECTION, query=QUERY, k=5), timeout=60
                )
                self.answers.append(
                    (reply.model_fingerprint, [h.id for h in reply.hits], [h.score for h in reply.hits])
                )
                doc_id = f"during-{i}"
                text = f"Note {i} written during the migration about glacier number {i * 37 % 101}."
                (ack,) = ingest(self.served.server.address, COLLECTION, [(doc_id, text, {"i": i})])
                if ack.error.code:
                    self.errors.append(f"ingest {doc_id}: {ack.error.message}")
                else:
                    self.ingested.append(doc_id)
                i += 1
            except grpc.RpcError as exc:
                self.errors.append(f"{exc.code().name}: {exc.details()}")


def test_migrate_under_load_then_rollback(served: Served) -> None:
    docs = scifact_docs(60)
    assert all(a.error.code == 0 for a in ingest(served.server.address, COLLECTION, docs))
    before = served.collections.Search(pb.SearchRequest(collection=COLLECTION, query=QUERY, k=5), timeout=60)
    assert before.model_fingerprint == served.a.fingerprint and len(before.hits) == 5

    load = _Load(served)
    thread = threading.Thread(target=load.run)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while len(load.answers) < 3 and time.monotonic() < deadline and not load.errors:
            thread.join(0.05)  # until the load has answers from "a" before the migration starts
        steps = list(
            served.collections.Migrate(pb.MigrateRequest(collection=COLLECTION, to_model="b"), timeout=600)
        )
        answered_at_cutover = len(load.answers)
        deadline = time.monotonic() + 120
        while len(load.answers) < answered_at_cutover + 3 and time.monotonic() < deadline and not load.errors:
            thread.join(0.05)  # a few answers after the cutover
    finally:
        load.stop.set()
        thread.join(120)
    assert not load.errors, load.errors[:3]
    assert steps[-1].state == "cut_over" and steps[-1].fingerprint == served.b.fingerprint
    assert steps[0].state == "copying" and steps[-1].done >= len(docs)
    short = [a for a in load.answers if len(a[1]) != 5]
    assert not short, short[:3]  # every search answered, never empty
    models = [fp for fp, _, _ in load.answers]
    switch = models.index(served.b.fingerprint)
    assert switch >= 3 and set(models[:switch]) == {served.a.fingerprint}
    assert set(models[switch:]) == {served.b.fingerprint}  # from "b" only, once switched
    # Each answer's scores are its model's own cosines of the query and the documents (a
    # document stored as chunks scores its best chunk: Embed with chunking cuts it the same way).
    texts = {doc_id: text for doc_id, text, _ in docs}
    for fp, ids, scores in (load.answers[0], load.answers[-1]):
        model = "a" if fp == served.a.fingerprint else "b"
        known = [(i, s) for i, s in zip(ids, scores, strict=True) if i in texts]
        assert known
        query = _vectors(served, model, [QUERY])[0]
        expected = [
            float(np.max(chunks @ query))
            for chunks in _chunk_vectors(served, model, [texts[i] for i, _ in known])
        ]
        np.testing.assert_allclose([s for _, s in known], expected, atol=2e-2)

    # Everything ingested during the migration is there and searchable by its own text.
    assert len(load.ingested) >= 6
    got = served.collections.GetDocuments(
        pb.GetDocumentsRequest(collection=COLLECTION, ids=load.ingested), timeout=60
    )
    assert not got.missing and len(got.documents) == len(load.ingested)
    for doc in list(got.documents)[:: max(1, len(load.ingested) // 4)]:
        hit = served.collections.Search(
            pb.SearchRequest(collection=COLLECTION, query=doc.text, k=1), timeout=60
        )
        assert hit.hits[0].id == doc.id and hit.model_fingerprint == served.b.fingerprint

    # Rollback: "a"'s results again, nothing embedded.
    bulk = served.bulk_items()
    (step,) = served.collections.Migrate(pb.MigrateRequest(collection=COLLECTION, rollback=True), timeout=60)
    assert step.state == "rolled_back" and step.fingerprint == served.a.fingerprint
    after = served.collections.Search(pb.SearchRequest(collection=COLLECTION, query=QUERY, k=5), timeout=60)
    assert after.model_fingerprint == served.a.fingerprint
    assert served.bulk_items() == bulk
    assert [h.id for h in after.hits][:5] == [h.id for h in before.hits] or any(
        h.id.startswith("during-") for h in after.hits
    )
    np.testing.assert_allclose(
        [h.score for h in after.hits if not h.id.startswith("during-")][:3],
        [h.score for h in before.hits][:3],
        atol=1e-5,
    )
    # Documents written after the cutover reached the retained version too: nothing lost.
    got = served.collections.GetDocuments(
        pb.GetDocumentsRequest(collection=COLLECTION, ids=load.ingested), timeout=60
    )
    assert not got.missing

    # Wrong states and names: clear errors with the right status.
    cases = [
        (
            pb.MigrateRequest(collection=COLLECTION, to_model="zz"),
            grpc.StatusCode.NOT_FOUND,
            "serves 'a', 'b'",
        ),
        (pb.MigrateRequest(collection="nope", to_model="b"), grpc.StatusCode.NOT_FOUND, "no collection"),
        (
            pb.MigrateRequest(collection=COLLECTION, to_model="a"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "already",
        ),
        (
            pb.MigrateRequest(collection=COLLECTION, abort=True),
            grpc.StatusCode.FAILED_PRECONDITION,
            "no migration",
        ),
        (pb.MigrateRequest(collection=COLLECTION), grpc.StatusCode.INVALID_ARGUMENT, "exactly one"),
    ]
    for request, code, words in cases:
        with pytest.raises(grpc.RpcError) as error:
            list(served.collections.Migrate(request, timeout=60))
        assert error.value.code() == code and words in error.value.details(), error.value.details()


def test_edge_synced_before_cutover_resyncs_itself_after(served: Served, tmp_path: Path) -> None:
    from edge_client import EdgeClient

    collection = "edgy"
    docs = scifact_docs(30, skip=100)
    assert all(a.error.code == 0 for a in ingest(served.server.address, collection, docs))
    info = served.embed.Info(pb.InfoRequest(), timeout=30)
    bundles = {m.name: m.edge_bundle_fingerprint for m in info.models}
    assert bundles["a"] == info.edge_bundle_fingerprint and bundles["b"] and bundles["b"] != bundles["a"]
    with EdgeClient(tmp_path / "edge", server=served.server.address) as client:
        client.init()
        first = client.sync(collection)
        assert first.documents == 30 and client.bundle.fingerprint == bundles["a"]
        doc_id, text, _ = docs[7]
        assert client.search_local(text, collection=collection, k=1)[0].id == doc_id

        steps = list(
            served.collections.Migrate(pb.MigrateRequest(collection=collection, to_model="b"), timeout=600)
        )
        assert steps[-1].state == "cut_over"
        report = client.sync(collection)  # no init by hand: the edge fetches the new bundle
        assert client.bundle.fingerprint == bundles["b"]
        assert report.full_resync and report.documents == 30 and report.upserts == 30
        for doc_id, text, _ in docs[::6]:  # its own encoder (model b's bundle) finds them locally
            assert client.search_local(text, collection=collection, k=1)[0].id == doc_id
        assert client.sync(collection).upserts == 0  # and it is then up to date


def test_kill9_during_online_migration_then_restart_resumes(served: Served) -> None:
    """Last in this module: it kills the module's server."""
    collection = "crashy"
    notes = [(f"n{i:03d}", f"Short note {i} about harbour {i * 7919 % 997}.", {"i": i}) for i in range(150)]
    assert all(a.error.code == 0 for a in ingest(served.server.address, collection, notes))
    kill_at = random.Random(9).choice([32, 64, 96])
    seen: list[int] = []

    def migrate() -> None:
        with contextlib.suppress(grpc.RpcError):  # the kill ends the call
            for step in served.collections.Migrate(
                pb.MigrateRequest(collection=collection, to_model="b"), timeout=600
            ):
                seen.append(step.done)
                if step.done >= kill_at:
                    served.server.process.kill()

    thread = threading.Thread(target=migrate)
    thread.start()
    thread.join(600)
    assert served.server.process.wait(60) == -9 and max(seen) >= kill_at
    args = ("--model", "a=all-MiniLM-L6-v2", "--model", f"b={served.b.path}", "--extra-model-workers", "1")
    with (
        running_server(served.server.data_dir, *args) as again,
        grpc.insecure_channel(again.address) as channel,
    ):
        info = EmbeddingServiceStub(channel).Info(pb.InfoRequest(), timeout=60)
        (row,) = [c for c in info.collections if c.name == collection]
        # Exactly one version serves, whole; searches answer from it.
        assert row.model_fingerprint in (served.a.fingerprint, served.b.fingerprint)
        assert row.documents == 150 and not row.stale
        stub = CollectionServiceStub(channel)
        hit = stub.Search(pb.SearchRequest(collection=collection, query=notes[5][1], k=1), timeout=60)
        assert hit.hits[0].id == "n005"  # from one version or the other (the resumed one may cut over)
        assert hit.model_fingerprint in (served.a.fingerprint, served.b.fingerprint)
        # The restarted server resumed the migration by itself; this call follows it (or
        # finds it done), and the resumed run embedded only what the killed one had not.
        if row.model_fingerprint == served.a.fingerprint:
            try:
                steps = list(
                    stub.Migrate(pb.MigrateRequest(collection=collection, to_model="b"), timeout=600)
                )
                assert steps[-1].state == "cut_over"
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "already" in (
                    exc.details() or ""
                )
            assert "resuming the migration of 'crashy'" in again.log()
            done = re.search(
                r"collection 'crashy' now on model 'b': 150 documents, (\d+) embedded", again.log()
            )
            assert done is not None and int(done.group(1)) <= 150 - kill_at, again.log()[-2000:]
        hit = stub.Search(pb.SearchRequest(collection=collection, query=notes[5][1], k=1), timeout=60)
        assert hit.hits[0].id == "n005" and hit.model_fingerprint == served.b.fingerprint
