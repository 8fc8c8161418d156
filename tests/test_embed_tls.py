"""TLS: with --tls-cert/--tls-key the server speaks TLS only (in-process, during start-up)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import EmbeddingServiceStub
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


async def test_tls_port_with_a_token_refuses_an_embed_call_without_it(tmp_path: Path) -> None:
    """An Embed call over TLS reaches the service only with the bearer token (the call itself is
    then UNAVAILABLE: no runtime here; embeddings over mutual TLS with a token, through every
    client, are tests/test_tls_clients.py's)."""
    cert, key = self_signed(tmp_path)
    settings = Settings.from_env(
        {}, port=0, data_dir=tmp_path / "data", tls_cert=str(cert), tls_key=str(key), auth_token="s3cret"
    )
    grpc_server = await start_grpc(settings)
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{grpc_server.port}", creds) as channel:
            embed = EmbeddingServiceStub(channel).Embed
            request = pb.EmbedRequest(inputs=["over TLS"])
            codes = []
            for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "Bearer s3cret"),)):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await embed(request, metadata=metadata, timeout=10)
                codes.append(err.value.code())
        unauthenticated, unavailable = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE
        assert codes == [unauthenticated, unauthenticated, unavailable]
    finally:
        await grpc_server.server.stop(None)
