"""TLS: with --tls-cert/--tls-key the server speaks TLS only (in-process, during start-up)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import start_grpc
from server.settings import Settings
from tests._certs import self_signed


async def test_tls_port_accepts_tls_clients_only(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    settings = Settings.from_env({}, port=0, data_dir=tmp_path / "data", tls_cert=str(cert), tls_key=str(key))
    grpc_server = await start_grpc(settings)
    port = grpc_server.port
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{port}", creds) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING  # no runtime in this test
        async with grpc.aio.insecure_channel(f"localhost:{port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await grpc_server.server.stop(None)
