"""A dedicated ONNX server (int8 graph, one worker, no query cache) with a small encoder queue:
vectors do not depend on the batch, streams wait for queue room while unary calls fail fast,
and the gauges tell the truth when calls die or a worker dies idle."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import numpy as np
import psutil
import pytest

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc
from tests._collections import ingest, search
from tests.server_harness import ServerProcess, free_port, running_server

QUEUE = 48
LONG = "lorem ipsum dolor sit amet " * 60  # cut to 256 tokens: a slow input
MIXED = [
    "x",
    "A man is eating food.",
    "word " * 400,
    "The quick brown fox jumps over the lazy dog. " * 8,
    "b c",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar. " * 3,
    "北京大学的学生" * 20,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int]]:
    metrics_port = free_port()
    with running_server(
        tmp_path_factory.mktemp("pressure") / "data",
        "--backend", "onnx",  # int8 graph on CPU: dynamically quantized
        "--workers", "1",
        "--max-queue-items", str(QUEUE),
        "--max-client-batch-size", str(QUEUE),
        "--ingest-commit-docs", "16",
        "--max-batch-tokens", "1024",
        "--query-cache-size", "0",  # every call computes: alone really is alone
        "--metrics-port", str(metrics_port),
        "--batch-timeout-s", "600",  # a stopped worker is not restarted during a test
        "--interactive-lane", "off",  # these tests are about the workers' queue
    ) as proc:  # fmt: skip
        yield proc, metrics_port


@pytest.fixture(scope="module")
def stub(server: tuple[ServerProcess, int]) -> Iterator[pb_grpc.EmbeddingServiceStub]:
    with grpc.insecure_channel(server[0].address) as channel:
        yield pb_grpc.EmbeddingServiceStub(channel)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def gauge(port: int, name: str) -> float:
    lines = [line for line in scrape(port).splitlines() if line.startswith(name + " ")]
    return float(lines[0].split()[1]) if lines else 0.0


def wait_for(port: int, name: str, ok: object, timeout: float = 120) -> list[float]:
    """Poll gauge ``name`` (no call to the gRPC server) until ``ok(value)``; the values seen."""
    seen = [gauge(port, name)]
    deadline = time.monotonic() + timeout
    while not ok(seen[-1]):  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{name} stayed at {seen[-1]} (seen {sorted(set(seen))})"
        time.sleep(0.05)  # polling an observable condition, bounded by the deadline
        seen.append(gauge(port, name))
    return seen


def worker_of(server: ServerProcess) -> psutil.Process:
    (worker,) = [
        c for c in psutil.Process(server.process.pid).children() if "spawn_main" in " ".join(c.cmdline())
    ]
    return worker


@contextmanager
def worker_stopped(server: ServerProcess) -> Iterator[None]:
    """SIGSTOP the encoder worker: nothing leaves the queue until the block ends, however fast
    the machine (--batch-timeout-s is far longer than any block here)."""
    worker = worker_of(server)
    worker.suspend()
    try:
        yield
    finally:
        worker.resume()


def queue_long_call(
    stub: pb_grpc.EmbeddingServiceStub, port: int, prefix: str, timeout: float = 600
) -> grpc.Future:
    """A unary Embed of QUEUE long inputs, returned once (worker stopped) they wait in the queue;
    the worker holds one batch of them, so the queue is nearly full."""
    call = stub.Embed.future(
        pb.EmbedRequest(inputs=[f"{prefix} {i} {LONG}" for i in range(QUEUE)]), timeout=timeout
    )
    seen = wait_for(port, "embed_queue_depth", lambda depth: depth >= QUEUE - 8 or call.done())
    assert seen[-1] >= QUEUE - 8, call.exception()
    return call


def vectors(reply: pb.EmbedResponse, dtype: str) -> np.ndarray:
    return np.stack([np.frombuffer(v.data, dtype) for v in reply.embeddings])


# --- 3. determinism on the ONNX path ----------------------------------------------------------


def test_onnx_vectors_are_the_same_alone_and_in_a_batch(stub: pb_grpc.EmbeddingServiceStub) -> None:
    info = stub.Info(pb.InfoRequest(), timeout=10)
    assert (info.backend, info.dtype) == ("onnx", "int8")
    for precision, dtype in (
        (pb.PRECISION_FLOAT32, "<f4"),
        (pb.PRECISION_INT8, "i1"),
        (pb.PRECISION_UBINARY, "u1"),
    ):
        options = pb.EmbedOptions(precision=precision)
        batch = vectors(stub.Embed(pb.EmbedRequest(inputs=MIXED, options=options), timeout=120), dtype)
        alone = np.concatenate(
            [
                vectors(stub.Embed(pb.EmbedRequest(inputs=[t], options=options), timeout=60), dtype)
                for t in MIXED
            ]
        )
        if precision == pb.PRECISION_FLOAT32:
            assert float((batch * alone).sum(axis=1).min()) >= 0.999
        elif precision == pb.PRECISION_INT8:
            assert int(np.abs(batch.astype(int) - alone.astype(int)).max()) <= 1
        else:
            flips = np.unpackbits(batch, axis=1) != np.unpackbits(alone, axis=1)
            assert int(flips.sum(axis=1).max()) <= 1


def test_onnx_documents_equal_queries(server: tuple[ServerProcess, int]) -> None:
    address = server[0].address
    acks = ingest(address, "onnx-docs", [(f"d{i}", t, {}) for i, t in enumerate(MIXED)])
    assert not any(a.HasField("error") for a in acks)
    for i, text in enumerate(MIXED):
        best = search(address, "onnx-docs", text, k=1, exact=True).hits[0]
        assert best.id == f"d{i}" and best.score >= 0.999, (i, best.score)


# --- 5. streams wait for queue room, unary calls fail fast ------------------------------------


def test_streams_wait_for_room_while_unary_calls_fail_fast(
    server: tuple[ServerProcess, int], stub: pb_grpc.EmbeddingServiceStub
) -> None:
    address, port = server[0].address, server[1]
    streamed: list[pb.EmbedStreamResponse] = []
    acks: list[pb.IngestAck] = []
    docs: list[tuple[str, str, dict[str, object]]] = [
        (f"doc-{i}", f"pressure document {i} {LONG}", {}) for i in range(40)
    ]  # 3 commits of 16

    def stream() -> None:
        requests = (pb.EmbedStreamRequest(id=str(i), input=f"streamed {i} {LONG}") for i in range(30))
        streamed.extend(stub.EmbedStream(requests, timeout=600))

    threads = [
        threading.Thread(target=stream),
        threading.Thread(target=lambda: acks.extend(ingest(address, "pressure", docs))),
    ]
    with worker_stopped(server[0]):
        busy = queue_long_call(stub, port, "busy")
        with pytest.raises(grpc.RpcError) as err:
            stub.Embed(pb.EmbedRequest(inputs=[f"unary {i}" for i in range(12)]), timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"--max-queue-items={QUEUE}" in str(err.value.details())
        for thread in threads:
            thread.start()
        # The first Ingest commit (16) and stream items wait for room instead of failing.
        wait_for(port, "embed_queue_waiting", lambda waiting: waiting >= 16 + 4)
    for thread in threads:
        thread.join()
    assert [a.id for a in acks] == [d[0] for d in docs]
    assert not any(a.HasField("error") for a in acks) and [a.sequence for a in acks] == list(range(1, 41))
    assert [r.id for r in streamed] == [str(i) for i in range(30)]
    assert all(r.HasField("embedding") for r in streamed), [r.error.message for r in streamed if r.error.code]
    assert len(busy.result().embeddings) == QUEUE
    assert len(search(address, "pressure", "pressure document 7", k=40, exact=True).hits) == 40
    wait_for(port, "embed_queue_waiting", lambda waiting: waiting == 0)


# --- 6. the gauges tell the truth (the worker is stopped: only dropping empties the queue) ----


def test_queue_depth_drops_when_a_deadline_passes(
    server: tuple[ServerProcess, int], stub: pb_grpc.EmbeddingServiceStub
) -> None:
    with worker_stopped(server[0]):
        call = queue_long_call(stub, server[1], "deadline", timeout=5)
        with pytest.raises(grpc.RpcError) as err:
            call.result()
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(server[1], "embed_queue_depth", lambda depth: depth == 0)  # no other call needed


def test_queue_depth_drops_when_a_stream_is_cancelled(
    server: tuple[ServerProcess, int], stub: pb_grpc.EmbeddingServiceStub
) -> None:
    with worker_stopped(server[0]):
        requests = (pb.EmbedStreamRequest(id=str(i), input=f"cancel {i} {LONG}") for i in range(QUEUE))
        replies = stub.EmbedStream(requests, timeout=600)
        wait_for(server[1], "embed_queue_depth", lambda depth: depth >= 8)
        replies.cancel()
        wait_for(server[1], "embed_queue_depth", lambda depth: depth == 0)


CLIENT = """
import sys, grpc
from protos.embedding.v1 import embedding_pb2 as pb, embedding_pb2_grpc as pb_grpc
channel = grpc.insecure_channel(sys.argv[1])
text = "lorem ipsum dolor sit amet " * 60
pb_grpc.EmbeddingServiceStub(channel).Embed(pb.EmbedRequest(inputs=[f"dies {i} {text}" for i in range(40)]))
"""


def test_queue_depth_drops_when_the_client_process_dies(server: tuple[ServerProcess, int]) -> None:
    with worker_stopped(server[0]):
        client = subprocess.Popen([sys.executable, "-c", CLIENT, server[0].address])
        try:
            wait_for(server[1], "embed_queue_depth", lambda depth: depth >= 8)
        finally:
            client.kill()
            client.wait()
        wait_for(server[1], "embed_queue_depth", lambda depth: depth == 0)


def test_workers_ready_drops_when_an_idle_worker_dies_and_recovers(server: tuple[ServerProcess, int]) -> None:
    port = server[1]
    wait_for(port, "embed_workers_ready", lambda ready: ready == 1)
    restarts = gauge(port, "embed_worker_restarts_total")
    worker_of(server[0]).kill()  # idle: no call is running, none is made below
    wait_for(port, "embed_workers_ready", lambda ready: ready == 0)
    wait_for(port, "embed_workers_ready", lambda ready: ready == 1)
    assert gauge(port, "embed_worker_restarts_total") == restarts + 1
