"""Backpressure through real gRPC, on every client stream (embedding.v1 EmbedStream, tei.v1
EmbedStream, Ingest): a client that sends far faster than the server embeds is held by flow
control. The server stops reading once its window is full, so the client's send blocks: the
requests the client managed to hand over stay within the server's window plus what the
transport holds, however long the stream is, and the server's memory with them. The server
keeps serving afterwards.

The client's request iterator counts what gRPC pulled from it; gRPC pulls the next request only
once the previous one was sent, so that count is what left the client.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import CollectionServiceStub, EmbeddingServiceStub
from protos.tei.v1 import tei_pb2
from protos.tei.v1.tei_pb2_grpc import EmbedStub
from server.settings import Settings
from tests.server_harness import ServerProcess

# One word longer than WordPiece's 100 characters: a single [UNK] token, 32 KB on the wire.
PAD = "x" * 32_000
ITEM_BYTES = len(PAD) + 2_000
# What may sit between the client's iterator and the server's reader: HTTP/2 stream and
# connection windows (grpc grows them with its bandwidth-delay estimate) and socket buffers.
# Measured here: 5 to 17 MB. Allowed: 64 MB; each stream is that much longer again, so a server
# that read everything would be caught.
TRANSPORT_ITEMS = (64 << 20) // ITEM_BYTES
DEFAULTS = Settings()  # the live server runs the defaults
LONG = "word " * 300  # cut to 256 tokens: each item costs the encoder real work


class Counted:
    """The requests of one stream, counting how many gRPC pulled (sent) so far."""

    def __init__(self, make: Callable[[int], Any], total: int) -> None:
        self.make, self.total, self.pulled = make, total, 0
        self.lock = threading.Lock()

    def __iter__(self) -> Iterator[Any]:
        for i in range(self.total):
            with self.lock:
                self.pulled += 1
            yield self.make(i)


def _held(replies: Any, sent: Counted, window: int, check_replies: int) -> int:
    """Read ``check_replies`` replies; after each, the client can have sent at most what the
    server answered plus its window plus the transport's share. Returns the most seen ahead."""
    received = ahead = 0
    for _ in replies:
        received += 1
        with sent.lock:
            ahead = max(ahead, sent.pulled - received)
        assert sent.pulled <= received + window + TRANSPORT_ITEMS, (sent.pulled, received)
        if received == check_replies:
            break
    replies.cancel()  # the rest is never read: the server drops its queued work
    assert received == check_replies
    assert sent.pulled < sent.total  # the client really was held back
    return ahead


def _still_serving(live_server: ServerProcess) -> None:
    with grpc.insecure_channel(live_server.address) as channel:
        reply = EmbeddingServiceStub(channel).Embed(pb.EmbedRequest(inputs=["still here"]), timeout=300)
    assert len(reply.embeddings) == 1


def test_embed_stream_holds_a_fast_client(live_server: ServerProcess) -> None:
    tag = uuid.uuid4().hex
    window = DEFAULTS.max_stream_in_flight
    sent = Counted(
        lambda i: pb.EmbedStreamRequest(id=str(i), input=f"{tag} {i} {LONG} {PAD}"),
        total=window + 2 * TRANSPORT_ITEMS,
    )
    with grpc.insecure_channel(live_server.address) as channel:
        replies = EmbeddingServiceStub(channel).EmbedStream(iter(sent), timeout=600)
        _held(replies, sent, window, check_replies=16)  # one batch of 256-token inputs
    _still_serving(live_server)


def test_tei_embed_stream_holds_a_fast_client(live_server: ServerProcess) -> None:
    tag = uuid.uuid4().hex
    window = DEFAULTS.max_stream_in_flight
    sent = Counted(
        lambda i: tei_pb2.EmbedRequest(inputs=f"{tag} {i} {LONG} {PAD}", truncate=True),
        total=window + 2 * TRANSPORT_ITEMS,
    )
    with grpc.insecure_channel(live_server.address) as channel:
        replies = EmbedStub(channel).EmbedStream(iter(sent), timeout=600)
        _held(replies, sent, window, check_replies=16)
    _still_serving(live_server)


def test_ingest_holds_a_fast_client(live_server: ServerProcess) -> None:
    tag = uuid.uuid4().hex[:8]  # few tokens: a commit of 256 documents is one model batch
    collection = f"backpressure-{tag}"
    # Read ahead, plus the commit batch being embedded and stored.
    window = DEFAULTS.ingest_max_pending + DEFAULTS.ingest_commit_docs
    sent = Counted(
        lambda i: pb.IngestRequest(collection=collection, id=str(i), text=f"{tag} {i} {PAD}"),
        total=window + 2 * TRANSPORT_ITEMS,
    )
    with grpc.insecure_channel(live_server.address) as channel:
        replies = CollectionServiceStub(channel).Ingest(iter(sent), timeout=600)
        _held(replies, sent, window, check_replies=2 * DEFAULTS.ingest_commit_docs)
    _still_serving(live_server)
