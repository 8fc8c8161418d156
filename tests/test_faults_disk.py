"""A real server against a full disk and damaged cache files (issue: resources, 3, 4 and 6).

- the data directory on a small tmpfs: a stream that fills the disk ends RESOURCE_EXHAUSTED
  naming the data directory and the free space, nothing acknowledged is lost, health stays
  SERVING, ingest resumes once space is freed, SIGTERM exits 0;
- an index file cut short by 208 bytes: the server starts, rebuilds it from the store and finds
  what the store holds; its saver survives failing saves; a final save that fails still runs
  every other step of the shutdown (exit 1, logged).
"""

from __future__ import annotations

import json
import os
import random
import signal
import string
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.embedding.v1 import embedding_pb2 as pb
from server.store import open_store
from tests._collections import ingest, scifact_docs, search, stub
from tests._small_fs import encoder_workers, fill, small_filesystem
from tests.server_harness import ServerProcess, running_server

MIB = 1 << 20


def _until(condition: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    """Poll ``condition`` (server log lines, files: nothing to subscribe to) until it holds."""
    waiter = threading.Event()
    for _ in range(int(timeout_s / 0.1)):
        if condition():
            return
        waiter.wait(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _big_stream(address: str, prefix: str, n: int, text: str) -> tuple[list[str], grpc.RpcError | None]:
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 * MIB)])
    # distinct texts: the store keeps one copy of a text per content
    requests = (
        pb.IngestRequest(collection="disk", id=f"{prefix}{i}", text=f"{prefix}{i} {text}") for i in range(n)
    )
    acked: list[str] = []
    with channel:
        service = stub(address)[1].__class__(channel)
        try:
            for ack in service.Ingest(requests, timeout=300):
                assert not ack.HasField("error"), ack.error
                acked.append(ack.id)
        except grpc.RpcError as exc:
            return acked, exc
    return acked, None


def test_full_disk_is_resource_exhausted_and_the_server_recovers(tmp_path: Path) -> None:
    # 1 MiB that zlib cannot shrink much (the store compresses texts): random words
    rng = random.Random(3)
    text = " ".join("".join(rng.choices(string.ascii_letters, k=8)) for _ in range(MIB // 9))[:MIB]
    with small_filesystem(tmp_path / "small", 48) as mount:
        data = mount / "data"
        # the edge bundle (a 90 MB ONNX graph) cannot live on a 48 MB disk
        args = ("--edge-bundle-dir", str(tmp_path / "edge"), "--index-save-interval-s", "0.5")
        with running_server(data, *args) as server:
            filler = mount / "filler"
            fill(filler)
            os.truncate(filler, filler.stat().st_size - 6 * MIB)  # 6 MiB left: a few documents
            acked, error = _big_stream(server.address, "a", 20, text)
            assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            assert str(data) in error.details() and "MiB free" in error.details(), error.details()
            assert acked  # the documents that fitted were stored and acknowledged
            assert _serving(server.address)
            filler.unlink()  # space freed: the same stream goes through now
            again, error = _big_stream(server.address, "b", 4, text)
            assert error is None and len(again) == 4
            assert search(server.address, "disk", text[:200], k=1, include_text=False).hits
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(60) == 0, server.log()[-3000:]
        store = open_store(data)
        try:
            assert all(doc is not None for doc in store.documents("disk", acked + again))
        finally:
            store.close()


def _index_files(data: Path) -> tuple[Path, dict[str, object]]:
    (sidecar,) = (data / "indexes").glob("*.json")
    return sidecar, json.loads(sidecar.read_text())


def _stop(server: ServerProcess) -> int:
    server.process.send_signal(signal.SIGTERM)
    return server.process.wait(60)


def test_damaged_index_is_rebuilt_and_index_saves_fail_safely(tmp_path: Path) -> None:
    data = tmp_path / "data"
    docs = scifact_docs(30)
    with running_server(data) as server:
        ingest(server.address, "idx", docs)
        assert _stop(server) == 0
    sidecar, meta = _index_files(data)
    usearch = sidecar.with_name(f"{sidecar.stem}.{meta['generation']}.usearch")
    os.truncate(usearch, usearch.stat().st_size - 208)  # the file: RuntimeError at restore

    with running_server(data, "--index-save-interval-s", "0.2") as server:
        assert "damaged" in server.log() and "rebuilding" in server.log()
        # what the store holds is found: each document is its own text's best hit
        for doc_id, text, _ in docs[:5]:
            assert search(server.address, "idx", text[:300]).hits[0].id == doc_id
        # the rebuilt index was saved at start-up, whole; the damaged file was set aside
        _, rebuilt = _index_files(data)
        saved = sidecar.with_name(f"{sidecar.stem}.{rebuilt['generation']}.usearch")
        assert saved.stat().st_size == rebuilt["bytes"]
        assert usearch.with_name(usearch.name + ".damaged").is_file()

        # A save that fails (its next file cannot be written: usearch raises RuntimeError, as on
        # a full disk) is logged and retried: the saver lives on and saves once it can.
        _, meta = _index_files(data)
        blocked = sidecar.with_name(f"{sidecar.stem}.{int(meta['generation']) + 1}.usearch")  # type: ignore[call-overload]
        blocked.mkdir()
        ingest(server.address, "idx", scifact_docs(1, skip=30))
        _until(lambda: "saving the vector indexes failed" in server.log(), "a failed save logged")
        blocked.rmdir()
        _until(lambda: _index_files(data)[1]["generation"] != meta["generation"], "a save after the failure")

        # The final save fails too: every other step still runs (store closed, workers
        # stopped, "stopped" logged) and the exit code says the save was lost.
        _, meta = _index_files(data)
        blocked = sidecar.with_name(f"{sidecar.stem}.{int(meta['generation']) + 1}.usearch")  # type: ignore[call-overload]
        blocked.mkdir()
        workers = encoder_workers(server.process.pid)
        ingest(server.address, "idx", scifact_docs(1, skip=31))
        assert _stop(server) == 1
        log = server.log()
        assert "saving the vector indexes at shutdown failed" in log and "stopped" in log, log[-3000:]
        assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    open_store(data).close()  # the store was closed: its lock is free
