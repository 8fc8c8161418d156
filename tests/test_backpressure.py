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

import json
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

# What may sit between the client's iterator and the server's reader: HTTP/2 stream and
# connection windows (grpc grows them with its bandwidth-delay estimate) and socket buffers.
# Measured here: 5 to 17 MB. Allowed: 24 MB, well under the 32 MB byte bounds, so a stream held
# only by its byte bound (its item window gone) or by nothing is caught.
TRANSPORT_BYTES = 24 << 20
DEFAULTS = Settings()  # the live server runs the defaults
LONG = "word " * 300  # cut to 256 tokens: each item costs the encoder real work


def _pad(size: int) -> str:
    """One word longer than WordPiece's 100 characters: a single [UNK] token, ``size`` bytes."""
    return "x" * size


# EmbedStream: small items, so the item window (256 in flight, ~1.5 MB) holds the stream long
# before the 32 MB byte window would.
STREAM_PAD = _pad(4_000)
STREAM_ITEM_BYTES = len(STREAM_PAD) + len(LONG) + 100
# Ingest: large documents (their bulk in metadata, so each costs the tokenizer and the model
# little), so the 32 MB read-ahead byte bound holds, well before its 1,024 documents would.
INGEST_PAD = {"pad": _pad(60_000)}  # 60 KB as JSON (metadata may be 64 KB)
INGEST_ITEM_BYTES = len(json.dumps(INGEST_PAD))  # at most what a document holds: counts err high


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


def _held(replies: Any, sent: Counted, window: int, transport: int, check_replies: int) -> int:
    """Read ``check_replies`` replies; after each, the client can have sent at most what the
    server answered plus its window plus the transport's share. Returns the most seen ahead."""
    received = ahead = 0
    for _ in replies:
        received += 1
        with sent.lock:
            ahead = max(ahead, sent.pulled - received)
        assert sent.pulled <= received + window + transport, (sent.pulled, received, window, transport)
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
    transport = TRANSPORT_BYTES // STREAM_ITEM_BYTES
    sent = Counted(
        lambda i: pb.EmbedStreamRequest(id=str(i), input=f"{tag} {i} {LONG} {STREAM_PAD}"),
        total=DEFAULTS.max_stream_bytes // STREAM_ITEM_BYTES + 2 * transport,
    )
    with grpc.insecure_channel(live_server.address) as channel:
        replies = EmbeddingServiceStub(channel).EmbedStream(iter(sent), timeout=600)
        # Four batches of 256-token inputs: time enough for a client a loose window lets through
        # (the 32 MB byte window alone) to overrun the bound.
        _held(replies, sent, window, transport, check_replies=64)
    _still_serving(live_server)


def test_tei_embed_stream_holds_a_fast_client(live_server: ServerProcess) -> None:
    tag = uuid.uuid4().hex
    window = DEFAULTS.max_stream_in_flight
    transport = TRANSPORT_BYTES // STREAM_ITEM_BYTES
    sent = Counted(
        lambda i: tei_pb2.EmbedRequest(inputs=f"{tag} {i} {LONG} {STREAM_PAD}", truncate=True),
        total=DEFAULTS.max_stream_bytes // STREAM_ITEM_BYTES + 2 * transport,
    )
    with grpc.insecure_channel(live_server.address) as channel:
        replies = EmbedStub(channel).EmbedStream(iter(sent), timeout=600)
        _held(replies, sent, window, transport, check_replies=64)
    _still_serving(live_server)


def _document(collection: str, doc_id: str, text: str) -> pb.IngestRequest:
    request = pb.IngestRequest(collection=collection, id=doc_id, text=text)
    request.metadata.update(INGEST_PAD)
    return request


def test_ingest_holds_a_fast_client(live_server: ServerProcess) -> None:
    tag = uuid.uuid4().hex[:8]  # few tokens: a commit is one model batch
    collection = f"backpressure-{tag}"
    # Read ahead (its byte bound), plus the commit batch being embedded and stored (its bytes),
    # plus the one document the reader holds while waiting for room.
    read_ahead = DEFAULTS.ingest_max_pending_bytes // INGEST_ITEM_BYTES
    commit = min(DEFAULTS.ingest_commit_docs, DEFAULTS.ingest_commit_bytes // INGEST_ITEM_BYTES)
    transport = TRANSPORT_BYTES // INGEST_ITEM_BYTES
    sent = Counted(
        lambda i: _document(collection, str(i), f"{tag} {i}"),
        total=DEFAULTS.ingest_max_pending + DEFAULTS.ingest_commit_docs + 2 * transport,
    )
    with grpc.insecure_channel(live_server.address) as channel:
        replies = CollectionServiceStub(channel).Ingest(iter(sent), timeout=600)
        _held(replies, sent, read_ahead + commit + 1, transport, check_replies=2 * commit)
    _still_serving(live_server)
