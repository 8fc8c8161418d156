"""A stream with many items in flight goes to the workers (server.embeddings.StreamRoute), on
the shared server (lane on: CPU workers), for embedding.v1 and tei.v1 EmbedStream alike: its
items are counted by the workers (``embed_items_total{priority="stream"}``) and their vectors
are what Embed returns for the same texts to cosine >= 0.999."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc
from protos.tei.v1 import tei_pb2
from protos.tei.v1.tei_pb2_grpc import EmbedStub
from tests._collections import scifact_docs
from tests.server_harness import ServerProcess

ITEMS = 64  # sent at once: far past the default --stream-worker-depth (8)


@pytest.fixture(scope="module")
def channel(live_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(live_server.address) as ch:
        yield ch


def counts(server: ServerProcess) -> tuple[float, float]:
    """(items the workers computed for deep streams, items the lane computed) so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as reply:
        lines = reply.read().decode().splitlines()

    def value(name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + " "))

    return value('embed_items_total{priority="stream"}'), value("embed_lane_items_total")


def texts() -> list[str]:
    tag = uuid.uuid4().hex  # nothing cached: every item is computed
    return [f"{tag} {text}" for _, text, _ in scifact_docs(ITEMS)]


def unary(channel: grpc.Channel, inputs: list[str]) -> np.ndarray:
    reply = pb_grpc.EmbeddingServiceStub(channel).Embed(pb.EmbedRequest(inputs=inputs), timeout=300)
    return np.stack([np.frombuffer(v.data, "<f4") for v in reply.embeddings])


def check(
    live_server: ServerProcess,
    before: tuple[float, float],
    channel: grpc.Channel,
    inputs: list[str],
    streamed: np.ndarray,
) -> None:
    stream_items, lane_items = (a - b for a, b in zip(counts(live_server), before, strict=True))
    assert stream_items >= 1  # the stream went to the workers once it was deep
    assert lane_items >= 1  # its first item, alone in flight, took the lane
    assert stream_items + lane_items == ITEMS
    alone = unary(channel, inputs)  # after the counts: Embed's inputs take the lane
    assert float((streamed * alone).sum(axis=1).min()) >= 0.999


def test_a_deep_embed_stream_is_computed_by_the_workers(
    live_server: ServerProcess, channel: grpc.Channel
) -> None:
    inputs = texts()
    before = counts(live_server)
    requests = (pb.EmbedStreamRequest(id=str(i), input=t) for i, t in enumerate(inputs))
    replies = list(pb_grpc.EmbeddingServiceStub(channel).EmbedStream(requests, timeout=300))
    assert [r.id for r in replies] == [str(i) for i in range(ITEMS)]
    assert not any(r.HasField("error") for r in replies)
    streamed = np.stack([np.frombuffer(r.embedding.data, "<f4") for r in replies])
    check(live_server, before, channel, inputs, streamed)


def test_a_deep_tei_stream_is_computed_by_the_workers(
    live_server: ServerProcess, channel: grpc.Channel
) -> None:
    inputs = texts()
    before = counts(live_server)
    requests = (tei_pb2.EmbedRequest(inputs=t, truncate=True) for t in inputs)
    replies = list(EmbedStub(channel).EmbedStream(requests, timeout=300))
    streamed = np.stack([np.asarray(r.embeddings, np.float32) for r in replies])
    check(live_server, before, channel, inputs, streamed)
