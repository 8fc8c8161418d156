"""tei.v1 Info, Embed, Tokenize: wire-compatible with text-embeddings-inference (issue 3)."""

from __future__ import annotations

import grpc

from protos.tei.v1 import tei_pb2_grpc
from server.app import Runtime


async def attach(server: grpc.aio.Server, runtime: Runtime) -> list[str]:
    # Not built yet: the generated base classes answer UNIMPLEMENTED.
    tei_pb2_grpc.add_InfoServicer_to_server(tei_pb2_grpc.InfoServicer(), server)
    tei_pb2_grpc.add_EmbedServicer_to_server(tei_pb2_grpc.EmbedServicer(), server)
    tei_pb2_grpc.add_TokenizeServicer_to_server(tei_pb2_grpc.TokenizeServicer(), server)
    return ["tei.v1.Info", "tei.v1.Embed", "tei.v1.Tokenize"]
