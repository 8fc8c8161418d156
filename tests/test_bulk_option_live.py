"""``EmbedOptions.bulk`` on the shared server (lane on: CPU workers): a bulk request is computed
by the workers (``embed_items_total{priority="client_bulk"}``), every item of it, whatever the
load; without it every item takes the interactive lane (``embed_lane_items_total``). The route is
the request's choice, so a text's vector depends only on its options: a bulk stream's vectors
are a bulk Embed's, a plain stream's a plain Embed's, and the two routes agree to cosine >=
0.999 (tests/test_tei_compat.py checks a TEI stream against unary calls to 1e-6)."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc
from tests._collections import scifact_docs
from tests.server_harness import ServerProcess

ITEMS = 48


@pytest.fixture(scope="module")
def stub(live_server: ServerProcess) -> Iterator[pb_grpc.EmbeddingServiceStub]:
    with grpc.insecure_channel(live_server.address) as channel:
        yield pb_grpc.EmbeddingServiceStub(channel)


def counts(server: ServerProcess) -> tuple[float, float]:
    """(items the workers computed for bulk requests, items the lane computed) so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as reply:
        lines = reply.read().decode().splitlines()

    def value(name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + " "))

    return value('embed_items_total{priority="client_bulk"}'), value("embed_lane_items_total")


def texts() -> list[str]:
    tag = uuid.uuid4().hex  # nothing cached: every item is computed
    return [f"{tag} {text}" for _, text, _ in scifact_docs(ITEMS)]


def stream(stub: pb_grpc.EmbeddingServiceStub, inputs: list[str], bulk: bool) -> np.ndarray:
    options = pb.EmbedOptions(bulk=True) if bulk else None
    requests = (
        pb.EmbedStreamRequest(id=str(i), input=t, options=options if i == 0 else None)
        for i, t in enumerate(inputs)
    )
    replies = list(stub.EmbedStream(requests, timeout=300))
    assert [r.id for r in replies] == [str(i) for i in range(len(inputs))]
    assert not any(r.HasField("error") for r in replies)
    return np.stack([np.frombuffer(r.embedding.data, "<f4") for r in replies])


def unary(stub: pb_grpc.EmbeddingServiceStub, inputs: list[str], bulk: bool) -> np.ndarray:
    options = pb.EmbedOptions(bulk=True) if bulk else None
    reply = stub.Embed(pb.EmbedRequest(inputs=inputs, options=options), timeout=300)
    return np.stack([np.frombuffer(v.data, "<f4") for v in reply.embeddings])


def test_a_bulk_stream_is_computed_by_the_workers_and_a_plain_one_by_the_lane(
    live_server: ServerProcess, stub: pb_grpc.EmbeddingServiceStub
) -> None:
    inputs = texts()
    before = counts(live_server)
    bulk = stream(stub, inputs, bulk=True)
    after_bulk = counts(live_server)
    assert (after_bulk[0] - before[0], after_bulk[1] - before[1]) == (ITEMS, 0)
    plain = stream(stub, inputs, bulk=False)  # the same texts, now the interactive route
    after_plain = counts(live_server)
    assert (after_plain[0] - after_bulk[0], after_plain[1] - after_bulk[1]) == (0, ITEMS)
    assert float((bulk * plain).sum(axis=1).min()) >= 0.999  # the two routes agree
    # Each route gives a text one vector, stream or unary (its own batch composition rules).
    assert float((bulk * unary(stub, inputs, bulk=True)).sum(axis=1).min()) >= 0.99999
    assert float((plain * unary(stub, inputs, bulk=False)).sum(axis=1).min()) >= 0.99999
