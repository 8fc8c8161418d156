"""The torch path at bfloat16, compiled (what AMX/AVX512-BF16 hosts run by default), on a
dedicated server without the query cache: inductor really compiled the model (its kernels are in
the server's fresh inductor cache), the compiled model computes the eager model's vectors, and a
text gets the same vector alone or in a batch of mixed lengths, as a query (Embed) and as a
document (Ingest). tests/test_backend_compile.py has the failed-compile fallback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc
from server.vectors import quantize_int8
from tests._collections import ingest, search
from tests.server_harness import ServerProcess, running_server

MIXED = [
    "x",
    "short one",
    "A man is eating food.",
    "word " * 400,  # cut to 256 tokens: the longest row, no padding
    "The quick brown fox jumps over the lazy dog. " * 3,
    "b c",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
    "北京大学的学生" * 5,
]


@pytest.fixture(scope="module")
def inductor_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inductor")  # empty: nothing compiled earlier is reused


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, inductor_cache: Path) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("bf16") / "data",
        "--backend", "torch",
        "--dtype", "bfloat16",
        "--compile", "on",
        "--workers", "1",
        "--query-cache-size", "0",  # every call computes: alone really is alone
        env={"TORCHINDUCTOR_CACHE_DIR": str(inductor_cache)},
    ) as proc:  # fmt: skip
        yield proc


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.EmbeddingServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.EmbeddingServiceStub(channel)


def vectors(reply: pb.EmbedResponse) -> np.ndarray:
    return np.stack([np.frombuffer(v.data, "<f4") for v in reply.embeddings])


# This caught the compile that never ran: the compiled model was assigned to sentence-
# transformers' Transformer.auto_model, a read-only property (of .model) since version 6, so
# forward kept calling the eager .model while the worker reported compiled=True.
def test_compiled_workers_say_so_and_match_the_eager_server(
    stub: pb_grpc.EmbeddingServiceStub,
    server: ServerProcess,
    inductor_cache: Path,
    live_server: ServerProcess,
) -> None:
    info = stub.Info(pb.InfoRequest(), timeout=10)
    assert info.compiled and "torch.compile failed" not in server.log()
    assert [p for p in inductor_cache.rglob("*") if p.is_file()]  # inductor generated the model's kernels
    compiled = vectors(stub.Embed(pb.EmbedRequest(inputs=MIXED), timeout=300))
    with grpc.insecure_channel(live_server.address) as channel:  # the harness: --compile off
        eager_stub = pb_grpc.EmbeddingServiceStub(channel)
        eager_info = eager_stub.Info(pb.InfoRequest(), timeout=10)
        request = pb.EmbedRequest(inputs=MIXED)
        eager = vectors(eager_stub.Embed(request, timeout=300))
    assert eager_info.backend == "torch" and not eager_info.compiled
    # bf16 compiled against the eager model at its own dtype: rounding, nothing more.
    assert float((compiled * eager).sum(axis=1).min()) >= 0.99


def test_bf16_queries_are_the_same_alone_and_in_a_batch(stub: pb_grpc.EmbeddingServiceStub) -> None:
    info = stub.Info(pb.InfoRequest(), timeout=10)
    assert (info.backend, info.dtype, info.compiled) == ("torch", "bfloat16", True)
    batch = vectors(stub.Embed(pb.EmbedRequest(inputs=MIXED), timeout=300))
    alone = np.concatenate([vectors(stub.Embed(pb.EmbedRequest(inputs=[t]), timeout=120)) for t in MIXED])
    assert float((batch * alone).sum(axis=1).min()) >= 0.999
    # int8 and ubinary as the server makes them (server.vectors), with its published ranges:
    # bf16 is slow here, so the vectors are computed once, not once per precision.
    ranges = (
        np.array(info.int8_calibration.min, np.float32),
        np.array(info.int8_calibration.max, np.float32),
    )
    codes = [quantize_int8(v, *ranges).astype(int) for v in (batch, alone)]
    assert int(np.abs(codes[0] - codes[1]).max()) <= 1
    assert int(((batch > 0) != (alone > 0)).sum(axis=1).max()) <= 1  # ubinary: sign bits


def test_bf16_documents_equal_queries(server: ServerProcess) -> None:
    acks = ingest(server.address, "bf16-docs", [(f"d{i}", t, {}) for i, t in enumerate(MIXED)])
    assert not any(a.HasField("error") for a in acks)
    for i, text in enumerate(MIXED):
        best = search(server.address, "bf16-docs", text, k=1, exact=True).hits[0]
        assert best.id == f"d{i}" and best.score >= 0.999, (i, best.score)
