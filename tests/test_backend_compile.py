"""Which backend actually ran: ``Info.compiled`` says whether every worker runs a torch.compile'd
model, or the eager model (``--compile off``, the ONNX backend, or the fallback when compiling
fails), and the compiled model computes the eager model's vectors. These are the tests that opt
into ``--compile on``; every other server starts eager (tests/server_harness.py).

"Compiled" is checked where it shows outside the process: inductor writes the kernels it
generated into its cache directory (a fresh one per test), and without a C++ compiler it cannot
compile at all.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import EmbeddingServiceStub
from tests.server_harness import ServerProcess, running_server

TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]
# These caught the compile that never ran: the compiled model was assigned to sentence-
# transformers' Transformer.auto_model, a read-only property (of .model) since version 6, so
# forward kept calling the eager .model while the worker reported compiled=True.


def _info_and_vectors(address: str) -> tuple[pb.InfoResponse, np.ndarray]:
    with grpc.insecure_channel(address) as channel:
        stub = EmbeddingServiceStub(channel)
        info = stub.Info(pb.InfoRequest(), timeout=60)
        reply = stub.Embed(pb.EmbedRequest(inputs=TEXTS), timeout=300)
    return info, np.stack([np.frombuffer(v.data, "<f4") for v in reply.embeddings])


def _generated_kernels(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file()] if cache.is_dir() else []


def test_compiled_workers_say_so_and_match_the_eager_server(
    live_server: ServerProcess, tmp_path: Path
) -> None:
    eager_info, eager = _info_and_vectors(live_server.address)
    assert eager_info.backend == "torch" and not eager_info.compiled  # the harness: --compile off
    cache = tmp_path / "inductor"
    env = {"TORCHINDUCTOR_CACHE_DIR": str(cache)}
    with running_server(tmp_path / "data", "--compile", "on", env=env) as server:
        info, compiled = _info_and_vectors(server.address)
    assert info.compiled and info.dtype == eager_info.dtype
    assert "torch.compile failed" not in server.log()
    assert _generated_kernels(cache)  # inductor really generated and built the model's kernels
    # Same dtype on both sides: inductor's fused kernels round differently, nothing more.
    assert np.all(np.sum(compiled * eager, axis=1) > 0.999)


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
