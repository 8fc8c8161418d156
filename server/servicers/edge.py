"""embedding.v1.EdgeService: GetEdgeBundle (issue 5)."""

from __future__ import annotations

import grpc

from protos.embedding.v1.embedding_pb2_grpc import EdgeServiceServicer, add_EdgeServiceServicer_to_server
from server.app import Runtime


async def attach(server: grpc.aio.Server, runtime: Runtime) -> list[str]:
    # Not built yet: the generated base class answers UNIMPLEMENTED.
    add_EdgeServiceServicer_to_server(EdgeServiceServicer(), server)
    return ["embedding.v1.EdgeService"]
