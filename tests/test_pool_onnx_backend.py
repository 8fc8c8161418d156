"""--backend onnx: two ONNX Runtime workers on the edge bundle's export give the model's vectors."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc
from tests.server_harness import ServerProcess, running_server

TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]


def embed(address: str) -> tuple[pb.InfoResponse, np.ndarray]:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        reply = stub.Embed(pb.EmbedRequest(inputs=TEXTS), timeout=60)
        return stub.Info(pb.InfoRequest(), timeout=10), np.stack(
            [np.frombuffer(v.data, "<f4") for v in reply.embeddings]
        )


def test_onnx_workers_match_the_torch_server(tmp_path: Path, live_server: ServerProcess) -> None:
    _, torch_vectors = embed(live_server.address)
    with running_server(tmp_path / "data", "--backend", "onnx", "--workers", "2") as server:
        info, onnx_vectors = embed(server.address)
    assert (info.backend, info.workers, info.dtype) == ("onnx", 2, "float32")
    assert float(onnx_vectors[0] @ onnx_vectors[1]) == pytest.approx(0.7553, abs=0.0005)
    assert np.all(np.sum(onnx_vectors * torch_vectors, axis=1) > 0.999)
