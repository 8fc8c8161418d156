"""embedding.v1.EmbeddingService: Info, Embed, EmbedStream, Tokenize (issue 3)."""

from __future__ import annotations

import grpc

from protos.embedding.v1.embedding_pb2_grpc import (
    EmbeddingServiceServicer,
    add_EmbeddingServiceServicer_to_server,
)
from server.app import Runtime


async def attach(server: grpc.aio.Server, runtime: Runtime) -> list[str]:
    # Not built yet: the generated base class answers UNIMPLEMENTED.
    add_EmbeddingServiceServicer_to_server(EmbeddingServiceServicer(), server)
    return ["embedding.v1.EmbeddingService"]
