"""Which backend actually ran: ``Info.compiled`` is False when compiling fails (no C++ compiler
for inductor) and the worker runs the very same eager model. The compiled case (inductor's
kernels really generated, the eager model's vectors) is in tests/test_compute_bf16.py, on its
compiled server; every other server starts eager (tests/server_harness.py).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import EmbeddingServiceStub
from tests.server_harness import ServerProcess, running_server

TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]


def _info_and_vectors(address: str) -> tuple[pb.InfoResponse, np.ndarray]:
    with grpc.insecure_channel(address) as channel:
        stub = EmbeddingServiceStub(channel)
        info = stub.Info(pb.InfoRequest(), timeout=60)
        reply = stub.Embed(pb.EmbedRequest(inputs=TEXTS), timeout=300)
    return info, np.stack([np.frombuffer(v.data, "<f4") for v in reply.embeddings])


def test_a_failed_compile_falls_back_to_eager_and_says_so(live_server: ServerProcess, tmp_path: Path) -> None:
    # No C++ compiler for inductor, and an empty inductor cache so nothing compiled earlier is
    # reused: torch.compile fails in the worker's warm-up.
    env = {"CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    with running_server(tmp_path / "data", "--compile", "on", env=env) as server:
        info, vectors = _info_and_vectors(server.address)
    assert info.backend == "torch" and not info.compiled
    assert "torch.compile failed" in server.log() and "running the model eagerly" in server.log()
    _, eager = _info_and_vectors(live_server.address)
    np.testing.assert_allclose(vectors, eager, atol=1e-5)  # the very same eager model
