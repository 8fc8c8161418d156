"""The server's lifecycle as operators and load balancers see it: reflection lists every service,
and SIGTERM drains: health turns NOT_SERVING for watchers, new calls are refused, calls in
flight (an EmbedStream, an Ingest) finish with every item answered, acknowledged documents are
stored, the indexes are saved, and the process exits 0. (NOT_SERVING during start-up is
tests/test_startup_health.py's.)"""

from __future__ import annotations

import json
import queue
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import CollectionServiceStub, EmbeddingServiceStub
from server.model import load_spec
from server.store import open_store
from tests.server_harness import ServerProcess, running_server

SERVICES = {
    "embedding.v1.EmbeddingService",
    "embedding.v1.CollectionService",
    "embedding.v1.EdgeService",
    "tei.v1.Info",
    "tei.v1.Embed",
    "tei.v1.Tokenize",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
}


def test_reflection_lists_and_describes_every_service(live_server: ServerProcess) -> None:
    with grpc.insecure_channel(live_server.address) as channel:
        reflected = ProtoReflectionDescriptorDatabase(channel)
        assert set(reflected.get_services()) >= SERVICES
        # A client without our .proto files can build the request types from the server alone.
        pool = descriptor_pool.DescriptorPool(reflected)
        search = pool.FindServiceByName("embedding.v1.CollectionService").methods_by_name["Search"]
        assert search.input_type.fields_by_name["query"].type == FieldDescriptor.TYPE_STRING
        assert search.output_type.full_name == "embedding.v1.SearchResponse"
        embed = pool.FindServiceByName("tei.v1.Embed")
        assert {m.name for m in embed.methods} >= {"Embed", "EmbedStream"}


class _Stream:
    """A client stream fed from a queue, so the test decides when each request goes out."""

    def __init__(self) -> None:
        self.outgoing: queue.Queue[Any] = queue.Queue()

    def requests(self) -> Iterator[Any]:
        return iter(self.outgoing.get, None)

    def send(self, request: Any) -> None:
        self.outgoing.put(request)

    def close(self) -> None:
        self.outgoing.put(None)


def _refused_while(in_flight: list[grpc.Future], stub: EmbeddingServiceStub) -> grpc.RpcError:
    """A new call, retried until the draining server refuses one. The drain starts right after
    health turns NOT_SERVING, so a call may still slip in first; it must never take longer than
    the calls in flight keep the server draining (they wait for the test)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert not any(call.done() for call in in_flight)
        try:
            stub.Info(pb.InfoRequest(), timeout=10)
        except grpc.RpcError as exc:
            return exc
    raise AssertionError("new calls were still accepted 60 s into the drain")


def test_sigterm_drains_in_flight_calls_refuses_new_ones_and_exits_zero(tmp_path: Path) -> None:
    collection = f"drain-{uuid.uuid4().hex[:8]}"
    with running_server(tmp_path / "data", "--grace-seconds", "120", "--store-float16") as server:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=300)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            embedding, collections = EmbeddingServiceStub(channel), CollectionServiceStub(channel)
            embeds, docs = _Stream(), _Stream()
            embedded = embedding.EmbedStream(embeds.requests(), timeout=300)
            acked = collections.Ingest(docs.requests(), timeout=300)
            embeds.send(pb.EmbedStreamRequest(id="0", input="before the signal"))
            docs.send(pb.IngestRequest(collection=collection, id="d0", text="stored before the signal"))
            assert next(embedded).id == "0" and next(acked).id == "d0"  # both calls are in flight

            server.process.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()  # a watcher is a call in flight too: it would hold the drain open
            refused = _refused_while([embedded, acked], embedding)
            assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused.details()

            for i in range(1, 6):
                embeds.send(pb.EmbedStreamRequest(id=str(i), input=f"during the drain {i}"))
                docs.send(
                    pb.IngestRequest(collection=collection, id=f"d{i}", text=f"stored in the drain {i}")
                )
            embeds.close()
            docs.close()
            rest = list(embedded)
            assert [r.id for r in rest] == [str(i) for i in range(1, 6)]
            assert all(r.HasField("embedding") for r in rest)
            acks = list(acked)
            assert [a.id for a in acks] == [f"d{i}" for i in range(1, 6)]
            assert not any(a.HasField("error") for a in acks)
        assert server.process.wait(timeout=120) == 0
    log = server.log()
    assert "draining" in log and "Traceback" not in log, log[-3000:]
    _check_store_after_drain(server.data_dir, collection, max(a.sequence for a in acks))


def _check_store_after_drain(data: Path, collection: str, sequence: int) -> None:
    """Every acknowledged document is stored (as float16: --store-float16 reached the store) and
    the index was saved at shutdown at the last acknowledged sequence."""
    spec = load_spec()
    store = open_store(data)
    try:
        docs = store.documents(collection, [f"d{i}" for i in range(6)])
        assert all(doc is not None for doc in docs)
        with store.env.begin() as txn:
            raw = txn.get(docs[0].content_hash, db=store._db["vectors"])  # type: ignore[union-attr]
        assert raw is not None and len(raw) == 1 + 2 * spec.dimension  # dtype tag + float16 payload
    finally:
        store.close()
    (sidecar,) = (data / "indexes").glob("*.json")
    assert json.loads(sidecar.read_text())["sequence"] == sequence == 6
