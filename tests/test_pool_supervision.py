"""A dedicated server with small limits: auth, overload, metrics, deadlines dropping queued
work, a killed and a hung worker, search priority over a bulk ingest. (The shared live_server
must not be killed; the SIGTERM drain is tests/test_server_lifecycle.py's.) It runs the ONNX
backend with two workers: supervision does not depend on the backend, ONNX workers restart in
seconds, and the same server checks ``--backend onnx`` against the torch live_server."""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1 import embedding_pb2_grpc as pb_grpc
from tests._collections import requests
from tests.server_harness import ServerProcess, free_port, running_server

TOKEN = "s3cret-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
LONG = "lorem ipsum dolor sit amet " * 60  # cut to 256 tokens: a slow input
QUEUE_LIMIT = 400


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int]]:
    metrics_port = free_port()
    with running_server(
        tmp_path_factory.mktemp("pool") / "data",
        "--backend", "onnx",
        "--dtype", "float32",  # the fp32 graph, so vectors can be compared with torch's
        "--workers", "2",
        "--max-queue-items", str(QUEUE_LIMIT),
        "--max-batch-tokens", "1024",
        "--metrics-port", str(metrics_port),
        "--auth-token", TOKEN,
        "--batch-timeout-s", "10",
        "--interactive-lane", "off",  # these tests supervise the workers: calls must reach them
    ) as proc:  # fmt: skip
        yield proc, metrics_port


@pytest.fixture(scope="module")
def stub(server: tuple[ServerProcess, int]) -> Iterator[pb_grpc.EmbeddingServiceStub]:
    with grpc.insecure_channel(server[0].address) as channel:
        yield pb_grpc.EmbeddingServiceStub(channel)


def vectors(reply: pb.EmbedResponse) -> np.ndarray:
    return np.stack([np.frombuffer(v.data, "<f4") for v in reply.embeddings])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def worker_processes(server: ServerProcess) -> list[psutil.Process]:
    children = psutil.Process(server.process.pid).children()
    workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
    assert len(workers) == 2, [c.cmdline() for c in children]
    return workers


def wait_all_workers_ready(metrics_port: int, timeout: float = 300) -> None:
    """Until the pool reports both workers loaded again (after a restart)."""
    deadline = time.monotonic() + timeout
    while metric(scrape(metrics_port), "embed_workers_ready") < 2:
        assert time.monotonic() < deadline, "a restarted worker never became ready"
        time.sleep(0.1)  # polling an observable condition, bounded by the deadline


def wait_until_busy(worker: psutil.Process, timeout: float = 60) -> None:
    """Until the worker has burnt 0.3 s of CPU more than now: a batch is being computed."""
    start = sum(worker.cpu_times()[:2])
    deadline = time.monotonic() + timeout
    while sum(worker.cpu_times()[:2]) - start < 0.3:
        assert time.monotonic() < deadline, "the worker never started computing"
        time.sleep(0.02)  # polling an observable condition, bounded by the deadline


def busy_call(
    server: ServerProcess, stub: pb_grpc.EmbeddingServiceStub, index: int, prefix: str
) -> tuple[psutil.Process, Any]:
    """Worker ``index``, once it is computing a batch of a long Embed call (returned as a future)."""
    worker = worker_processes(server)[index]
    inputs = [f"{prefix}{i} {LONG}" for i in range(QUEUE_LIMIT)]
    call = stub.Embed.future(pb.EmbedRequest(inputs=inputs), timeout=300, metadata=AUTH)
    wait_until_busy(worker)
    return worker, call


def test_onnx_workers_match_the_torch_server(
    live_server: ServerProcess, stub: pb_grpc.EmbeddingServiceStub
) -> None:
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]
    info = stub.Info(pb.InfoRequest(), timeout=10, metadata=AUTH)
    assert (info.backend, info.workers, info.dtype, info.compiled) == ("onnx", 2, "float32", False)
    onnx = vectors(stub.Embed(pb.EmbedRequest(inputs=texts), timeout=60, metadata=AUTH))
    with grpc.insecure_channel(live_server.address) as channel:
        torch = vectors(
            pb_grpc.EmbeddingServiceStub(channel).Embed(pb.EmbedRequest(inputs=texts), timeout=60)
        )
    assert float(onnx[0] @ onnx[1]) == pytest.approx(0.7553, abs=0.0005)
    assert np.all(np.sum(onnx * torch, axis=1) > 0.999)


def test_auth_is_required_except_for_health(
    server: tuple[ServerProcess, int], stub: pb_grpc.EmbeddingServiceStub
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(pb.EmbedRequest(inputs=["hi"]), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(pb.EmbedRequest(inputs=["hi"]), timeout=30, metadata=(("authorization", "Bearer nope"),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as err:
        list(stub.EmbedStream(iter([pb.EmbedStreamRequest(id="1", input="hi")]), timeout=30))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(stub.Embed(pb.EmbedRequest(inputs=["hi"]), timeout=30, metadata=AUTH).embeddings) == 1
    with grpc.insecure_channel(server[0].address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_unary_over_the_queue_limit_is_resource_exhausted(stub: pb_grpc.EmbeddingServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(pb.EmbedRequest(inputs=["x"] * (QUEUE_LIMIT + 1)), timeout=30, metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"--max-queue-items={QUEUE_LIMIT}" in err.value.details()


def test_metrics_count_requests_by_code_and_batches(
    server: tuple[ServerProcess, int], stub: pb_grpc.EmbeddingServiceStub
) -> None:
    # Its own refused, overloaded and served calls, so the test holds alone or in any order.
    calls: tuple[Callable[[], object], ...] = (
        lambda: stub.Embed(pb.EmbedRequest(inputs=["hi"]), timeout=30),
        lambda: stub.Embed(pb.EmbedRequest(inputs=["x"] * (QUEUE_LIMIT + 1)), timeout=30, metadata=AUTH),
    )
    for call in calls:
        with pytest.raises(grpc.RpcError):
            call()
    stub.Embed(pb.EmbedRequest(inputs=["counted"]), timeout=30, metadata=AUTH)
    text = scrape(server[1])
    assert (
        'embed_requests_total{code="UNAUTHENTICATED",method="/embedding.v1.EmbeddingService/Embed"}' in text
    )
    assert 'code="RESOURCE_EXHAUSTED"' in text
    assert metric(text, "embed_batch_size_count") >= 1
    assert "embed_queue_depth" in text and "embed_query_cache_misses_total" in text


def test_deadline_drops_the_queued_work_of_the_call(
    server: tuple[ServerProcess, int], stub: pb_grpc.EmbeddingServiceStub
) -> None:
    before = metric(scrape(server[1]), 'embed_items_total{priority="interactive"}')
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(
            pb.EmbedRequest(inputs=[f"{i} {LONG}" for i in range(QUEUE_LIMIT)]), timeout=1.0, metadata=AUTH
        )
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The next call is served after at most the batch that was in flight, not 100 long inputs.
    assert len(stub.Embed(pb.EmbedRequest(inputs=["after"]), timeout=60, metadata=AUTH).embeddings) == 1
    computed = metric(scrape(server[1]), 'embed_items_total{priority="interactive"}') - before
    # Without dropping, all 100 queued inputs would be computed before "after" (same priority, FIFO).
    assert computed < QUEUE_LIMIT, computed


def test_killed_worker_fails_the_call_in_flight_and_is_replaced(
    server: tuple[ServerProcess, int], stub: pb_grpc.EmbeddingServiceStub
) -> None:
    worker, call = busy_call(server[0], stub, 0, "")
    worker.kill()
    with pytest.raises(grpc.RpcError) as err:
        call.result()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "died (signal 9) while embedding this request" in err.value.details()
    reply = stub.Embed(pb.EmbedRequest(inputs=["back again"]), timeout=300, metadata=AUTH)
    assert len(reply.embeddings) == 1
    assert worker.pid not in [w.pid for w in worker_processes(server[0])]
    wait_all_workers_ready(server[1])


def test_hung_worker_times_out_the_call_and_is_replaced(
    server: tuple[ServerProcess, int], stub: pb_grpc.EmbeddingServiceStub
) -> None:
    worker, call = busy_call(server[0], stub, 1, "hang ")
    worker.suspend()  # SIGSTOP: alive but silent, like a deadlocked worker
    with pytest.raises(grpc.RpcError) as err:
        call.result()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "did not answer within 10s" in err.value.details()
    assert len(stub.Embed(pb.EmbedRequest(inputs=["alive"]), timeout=300, metadata=AUTH).embeddings) == 1
    assert worker.pid not in [w.pid for w in worker_processes(server[0])]
    wait_all_workers_ready(server[1])


def test_a_search_during_a_bulk_ingest_is_answered_before_it(server: tuple[ServerProcess, int]) -> None:
    """Search queries are INTERACTIVE, ingestion BULK (server/batching.py): a query submitted
    behind a queued commit of bulk items is embedded before them."""
    proc, metrics_port = server
    tag = uuid.uuid4().hex
    bulk: list[tuple[str, str, dict[str, Any]]] = [(f"b{i}", f"{tag} {i} {LONG}", {}) for i in range(120)]
    with grpc.insecure_channel(proc.address) as channel:
        collections = pb_grpc.CollectionServiceStub(channel)
        small: list[tuple[str, str, dict[str, Any]]] = [
            ("volcano", f"Volcanoes erupt lava and ash {tag}.", {}),
            ("tea", f"Green tea {tag}.", {}),
        ]
        list(collections.Ingest(iter(requests(f"prio-{tag}", small)), timeout=120, metadata=AUTH))
        acks: list[pb.IngestAck] = []

        def ingest() -> None:
            acks.extend(collections.Ingest(iter(requests(f"bulk-{tag}", bulk)), timeout=600, metadata=AUTH))

        ingesting = threading.Thread(target=ingest)
        ingesting.start()
        try:
            deadline = time.monotonic() + 120
            while metric(scrape(metrics_port), "embed_queue_depth") < len(bulk) // 2:
                assert time.monotonic() < deadline and ingesting.is_alive(), "the bulk items never queued"
                time.sleep(0.02)  # polling an observable condition, bounded by the deadline
            search = pb.SearchRequest(collection=f"prio-{tag}", query=f"lava {tag}", k=1)
            hit = collections.Search(search, timeout=120, metadata=AUTH).hits[0]
            still_queued = metric(scrape(metrics_port), "embed_queue_depth")
            acked = len(acks)
            assert hit.id == "volcano"
            # The Ingest call commits what it has read so far (its first commit may be a single
            # document), then submits the next commit's items at once, so at least half of the
            # bulk was queued in one commit when the search came. Jumping the queue, the query
            # was answered while some of those items still waited and that commit was not
            # acknowledged. In arrival order, every item queued before the query would have
            # been taken first, so bulk items could still be queued only if a later commit had
            # submitted them, after this one was acknowledged (half the bulk or more).
            assert still_queued > 0 and acked < len(bulk) // 2, (still_queued, acked)
        finally:
            ingesting.join(timeout=600)
    assert [a.id for a in acks] == [d[0] for d in bulk] and not any(a.cached for a in acks)


def test_the_server_log_has_no_traceback(server: tuple[ServerProcess, int]) -> None:
    log = server[0].log()
    assert "Traceback" not in log, log[-3000:]
    assert Path(server[0].log_path).is_file()
