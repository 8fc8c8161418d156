"""The service edge: one servicer per gRPC service, the only code that touches both protobuf and
the domain. :data:`SERVICES` lists every service the server registers (through
:func:`server.servicers._rpc.register`); :func:`servicers_for` builds their servicers."""

from __future__ import annotations

from google.protobuf.descriptor import ServiceDescriptor

from protos.embedding.v1 import embedding_pb2
from protos.tei.v1 import tei_pb2
from server.runtime import Runtime
from server.servicers._rpc import ServiceTable, register
from server.servicers.collections import CollectionServicer
from server.servicers.edge import EdgeServicer
from server.servicers.embedding import EmbeddingServicer
from server.servicers.tei import TeiServicer

__all__ = ["NEVER_SERVING", "SERVICES", "ServiceTable", "register", "servicers_for"]

SERVICES: tuple[ServiceDescriptor, ...] = (
    embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"],
    embedding_pb2.DESCRIPTOR.services_by_name["CollectionService"],
    embedding_pb2.DESCRIPTOR.services_by_name["EdgeService"],
    tei_pb2.DESCRIPTOR.services_by_name["Info"],
    tei_pb2.DESCRIPTOR.services_by_name["Embed"],
    tei_pb2.DESCRIPTOR.services_by_name["Predict"],
    tei_pb2.DESCRIPTOR.services_by_name["Rerank"],
    tei_pb2.DESCRIPTOR.services_by_name["Tokenize"],
)
# Registered so their calls get TEI's FAILED_PRECONDITION, but health reports them NOT_SERVING
# while the rest serves, as TEI does for an embedding model (router/src/grpc/server.rs).
NEVER_SERVING = frozenset({"tei.v1.Predict", "tei.v1.Rerank"})


def servicers_for(runtime: Runtime) -> dict[str, object]:
    """Full service name -> the object whose methods (named as in the proto) serve it."""
    tei = TeiServicer(runtime)
    return {
        "embedding.v1.EmbeddingService": EmbeddingServicer(runtime),
        "embedding.v1.CollectionService": CollectionServicer(runtime),
        "embedding.v1.EdgeService": EdgeServicer(runtime),
        "tei.v1.Info": tei,
        "tei.v1.Embed": tei,
        "tei.v1.Predict": tei,
        "tei.v1.Rerank": tei,
        "tei.v1.Tokenize": tei,
    }
