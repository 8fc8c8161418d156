"""A client that stops reading a server stream and cancels it ends the call quietly: no ERROR
with a traceback in the server's log (gRPC logs one when a write races the cancel: 20 of 200
such calls against a bare grpc.aio generator handler, 1 MiB messages), and the server serves on.
GetEdgeBundle streams 1 MiB chunks; EmbedStream answers a vector per item."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import EdgeServiceStub, EmbeddingServiceStub

CALLS = 60


def _read_then_cancel(call: Any, keep: int) -> int:
    read = 0
    try:
        for _ in call:
            read += 1
            if read >= keep:
                call.cancel()
                break
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.CANCELLED, err
    return read


def test_clients_that_cancel_mid_stream_leave_no_traceback(live_server: Any) -> None:
    tracebacks = live_server.log().count("Traceback")
    options = [("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(live_server.address, options=options) as channel:
        edge, embed = EdgeServiceStub(channel), EmbeddingServiceStub(channel)
        for i in range(CALLS):
            bundle = edge.GetEdgeBundle(pb.GetEdgeBundleRequest(), timeout=60)
            assert _read_then_cancel(bundle, 1 + i % 3) >= 1
        items = [pb.EmbedStreamRequest(id=str(j), input=f"cancelled stream item {j}") for j in range(64)]
        for i in range(CALLS // 3):
            assert _read_then_cancel(embed.EmbedStream(iter(items), timeout=60), 1 + i % 5) >= 1
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert live_server.log().count("Traceback") == tracebacks, live_server.log()[-3000:]
