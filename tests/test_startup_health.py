"""Start-up as a load balancer sees it: from the first moment the port answers, health says
NOT_SERVING (never a refused connection) until the runtime is ready, also while the edge bundle
is being fitted; calls made meanwhile are UNAVAILABLE naming the start-up phase."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedcore import EdgeBundle
from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import EmbeddingServiceStub
from server.launch import free_port, serve_command
from server.model import ModelSpec
from server.store import Upsert, content_hash, open_store

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_is_not_serving_from_bind_to_ready_also_while_fitting_the_edge_bundle(
    spec: ModelSpec, edge_bundle: EdgeBundle, tmp_path: Path
) -> None:
    # A store with enough documents that this start fits the edge projection (PCA rotation), and
    # an empty ONNX cache, so the edge phase also exports the model: a phase long enough to see.
    rng = np.random.default_rng(0)
    texts = [f"document {i} about {w}" for i, w in enumerate(rng.choice(["ice", "salt", "tea"], 300))]
    vectors = edge_bundle.encoder(int8=False).encode(texts)
    store = open_store(tmp_path / "data")
    store.upsert(
        [
            Upsert("c", f"d{i}", content_hash(spec.fingerprint, "", t), None, {}, v)
            for i, (t, v) in enumerate(zip(texts, vectors, strict=True))
        ],
        fingerprint=spec.fingerprint,
        dimension=spec.dimension,
    )
    store.close()
    port = free_port()
    log_path = tmp_path / "server.log"
    argv = serve_command(port, tmp_path / "data", "--workers", "1", "--compile", "off")
    env = {**os.environ, "EMBED_EDGE_ONNX_CACHE": str(tmp_path / "onnx")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    seen: list[str] = []  # one entry per probe: "refused", "NOT_SERVING" or "SERVING"
    phases: list[str] = []  # what a gated call said while health was NOT_SERVING
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            info = EmbeddingServiceStub(channel)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                    seen.append("refused")
                    continue
                seen.append("SERVING" if status == SERVING else "NOT_SERVING")
                if status == SERVING:
                    break
                try:
                    info.Info(pb.InfoRequest(), timeout=2)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    phases.append(exc.details() or "")
        assert seen[-1] == "SERVING", process.poll()
        first_answer = next(i for i, s in enumerate(seen) if s != "refused")
        assert "refused" not in seen[first_answer:]  # once bound, every probe got an answer
        assert seen.count("NOT_SERVING") >= 3
        assert any("the server is starting (loading or fitting the edge bundle)" in p for p in phases)
        assert any("starting the encoder workers" in p for p in phases)
        text = log_path.read_text()
        assert "edge projection: PCA rotation fitted on 300 vectors" in text
        # The first start's log is news, not library chatter: no onnxruntime quantizer notes
        # (~35 lines), no torch exporter warning, no per-worker weight-loading progress bar.
        assert "Quantization parameters" not in text and "pre-processing before quantization" not in text
        assert "Exporting aten::index" not in text and "Loading weights" not in text
    finally:
        process.terminate()
        assert process.wait(60) == 0
