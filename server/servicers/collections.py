"""embedding.v1.CollectionService: Ingest, Search, Delete, SyncVectors (issue 4)."""

from __future__ import annotations

import grpc

from protos.embedding.v1.embedding_pb2_grpc import (
    CollectionServiceServicer,
    add_CollectionServiceServicer_to_server,
)
from server.app import Runtime


async def attach(server: grpc.aio.Server, runtime: Runtime) -> list[str]:
    # Not built yet: the generated base class answers UNIMPLEMENTED.
    add_CollectionServiceServicer_to_server(CollectionServiceServicer(), server)
    return ["embedding.v1.CollectionService"]
